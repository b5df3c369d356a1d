"""pyOpenSSL/cryptography internals: in one module, bounded, checked at start.

The gateway relies on two OpenSSL operations pyOpenSSL has no API for (releasing an idle
connection's memory BIOs, setting key-exchange groups). These tests keep the promise that
goes with it: the installed versions are within pyproject.toml's bounds, the start-up
self-test passes on them, a missing internal stops start-up with a message an operator
can act on, and no other module reaches into those internals.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from gateway.auth.tls_provider import OpenSslTlsProvider, TlsConfigError
from gateway.config.model import TlsSettings
from gateway.xmpp import openssl_internals
from gateway.xmpp.openssl_internals import KNOWN_GOOD, OpenSslInternalsError, self_test

REPO = Path(__file__).resolve().parents[2]


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    return {r.name: r for r in requirements if r.name in KNOWN_GOOD}


def test_pyopenssl_and_cryptography_are_bounded_and_installed_within_the_bounds() -> None:
    requirements = declared()
    assert set(requirements) == set(KNOWN_GOOD)
    for name, requirement in requirements.items():
        assert any(spec.operator == "<" for spec in requirement.specifier), (
            f"{name} needs an upper bound in pyproject.toml: the gateway uses its internals")
        installed = importlib.metadata.version(name)
        assert requirement.specifier.contains(installed), (
            f"{name} {installed} is installed but pyproject.toml allows {requirement.specifier}")
        for known in KNOWN_GOOD[name]:
            assert requirement.specifier.contains(known), (
                f"{name} {known} is listed as known good but pyproject.toml excludes it")
        low, high = (Version(v) for v in KNOWN_GOOD[name])
        assert low <= high


def test_the_self_test_passes_on_the_installed_versions() -> None:
    assert openssl_internals.missing_features() == []
    assert openssl_internals._exercise() == []
    self_test()


def test_a_missing_internal_stops_start_up_with_what_is_missing_and_what_works(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(openssl_internals, "_CONNECTION_ATTRIBUTES",
                        ("_ssl", "_into_ssl_renamed"))
    monkeypatch.setattr(openssl_internals, "self_test",
                        openssl_internals.self_test.__wrapped__)
    with pytest.raises(OpenSslInternalsError) as caught:
        openssl_internals.self_test()
    message = str(caught.value)
    assert "pyOpenSSL Connection._into_ssl_renamed" in message
    installed = importlib.metadata.version("pyOpenSSL")
    assert f"installed: pyOpenSSL {installed}, cryptography " in message
    low, high = KNOWN_GOOD["pyOpenSSL"]
    assert f"known to work: pyOpenSSL {low} to {high}" in message

    # the TLS provider runs the self-test when it is built at start: start-up fails
    monkeypatch.setattr("gateway.auth.tls_provider.self_test",
                        openssl_internals.self_test)
    settings = TlsSettings(certificate=tmp_path / "none.crt", key=tmp_path / "none.key")
    with pytest.raises(TlsConfigError, match=r"Connection\._into_ssl_renamed"):
        OpenSslTlsProvider(settings)


def test_no_other_module_reaches_into_openssl_internals() -> None:
    private = re.compile(r"OpenSSL\._util|\._context\b|_into_ssl|_from_ssl|\._ssl\b"
                         r"|hazmat\.bindings")
    offenders = []
    for path in sorted((REPO / "gateway").rglob("*.py")):
        if path.name == "openssl_internals.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
