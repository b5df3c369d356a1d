"""The model is the one place a setting is defined: the loader reads every field of it,
with the field's own check and default, and checking a file stays pure."""

from __future__ import annotations

import dataclasses
import enum
import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.config.fields import READ
from gateway.config.loader import ConfigError, load_config_text
from gateway.config.model import GatewayConfig, SipSettings

BASE = Path("/etc/gw")


def written(value: Any) -> Any:
    """A model value as YAML (JSON is YAML) would write it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: written(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.init and f.metadata.get(READ, True)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [written(item) for item in value]
    if isinstance(value, dict):
        return {key: written(item) for key, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def read_back(expected: Any, loaded: Any, path: str) -> None:
    if dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        for f in dataclasses.fields(expected):
            if f.init and f.metadata.get(READ, True):
                read_back(getattr(expected, f.name), getattr(loaded, f.name),
                          f"{path}.{f.name}")
    elif isinstance(expected, Path):  # written paths are relative to the file's directory
        assert loaded == BASE / expected, path
    else:
        assert loaded == expected, path


def test_every_field_of_the_model_is_a_key_whose_default_passes_its_own_check() -> None:
    """Write every setting of every section with its default value: the loader must know
    each key (none dropped, none unknown) and accept each default."""
    defaults = GatewayConfig(domains=("a.example",))
    document = written(defaults)
    config = load_config_text(json.dumps(document), base_dir=BASE)
    read_back(defaults, config, "config")


def test_every_field_of_every_section_has_a_check() -> None:
    """A field whose type implies no check and that declares none is a TypeError when the
    loader derives its keys: caught here rather than at the first start."""
    seen: set[type] = set()

    def walk(cls: type) -> None:
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            for candidate in (hint, *typing.get_args(hint)):
                if dataclasses.is_dataclass(candidate) and candidate not in seen:
                    walk(candidate)

    walk(GatewayConfig)
    assert SipSettings in seen
    load_config_text("domains: [a.example]\n")  # derives the keys of every section


@pytest.mark.parametrize(("text", "expected"), [
    ("domains: [a.example]\nsip:\n  transport: udp\n  proxy_prot: 5070\n",
     "gw.yaml:4: sip.proxy_prot: unknown key — did you mean 'proxy_port'?"),
    ("domains: [a.example]\ncluster: {lease: 20, heartbeat_intervall: 2}\n",
     "gw.yaml:2: cluster.heartbeat_intervall: unknown key — did you mean "
     "'heartbeat_interval'?"),
    ("domains: [a.example]\ntls:\n  per_domain:\n    a.example: {certificate: c, key: k, "
     "chain: x}\n", "gw.yaml:4: tls.per_domain.a.example.chain: unknown key"),
])
def test_a_key_the_model_lacks_is_an_error_with_its_line_and_a_hint(
        text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, source=Path("gw.yaml"))
    [problem] = caught.value.problems
    assert str(problem).startswith(expected)


def test_defaults_not_written_come_from_the_model() -> None:
    config = load_config_text("domains: [a.example]\nsip: {backend: sip}\nstore: {url: ''}\n",
                              base_dir=BASE)
    assert config.sip == SipSettings(backend="sip")
    # relative default paths: relative to the directory above the file, also inside a
    # section that sets other keys only
    assert config.store.path == Path("/etc/data/gateway.sqlite3")
    assert config.tls.certificate == Path("/etc/certs/gateway.crt")
    assert config.admin_socket == Path("/etc/run/gateway.sock")


def test_checking_a_configuration_imports_no_resolver_and_no_sip_stack() -> None:
    """The config package is pure: DNS names and SIP trust are resolved at start, not
    while a file is checked (``check config`` on a host without network works)."""
    probe = (
        "import sys\n"
        "from gateway.config.loader import load_config_text\n"
        "import gateway.config.editor\n"
        "load_config_text('domains: [a.example]\\ndns: {nameservers: [127.0.0.53]}\\n"
        "sip: {backend: sip, trusted_sources: [10.0.0.0/29], trusted_names: [p.example]}\\n')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dns'"
        " or m.startswith(('gateway.sip', 'gateway.dns', 'gateway.net'))))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "[]"
