"""Bad configuration files get precise errors with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import ConfigError, load_config, load_config_text

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source=Path("gw.yaml"))
    return [str(p) for p in info.value.problems]


def test_the_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.domains == ("gateway.localhost",)
    assert config.listen[0].port == 5269
    assert config.tls.certificate == EXAMPLE.parent.parent / "certs" / "gateway.crt"


def test_unknown_key_with_suggestion() -> None:
    assert problems("domains: [a.example]\nlisten:\n  - host: 127.0.0.1\n    prot: 5269\n") == [
        "gw.yaml:4: listen[0].prot: unknown key — did you mean 'port'? (allowed: direct_tls, "
        "host, port)"]


def test_wrong_value_names_allowed_values() -> None:
    text = "domains: [a.example]\npartners:\n  - domain: b.example\n    type: federated\n" \
           "    sasl: maybe\n"
    assert problems(text) == [
        "gw.yaml:5: partners[0].sasl: 'maybe' is not one of required, optional, not-supported"]


def test_port_out_of_range() -> None:
    assert problems("domains: [a.example]\nlisten: [{host: x, port: 70000}]\n") == [
        "gw.yaml:2: listen[0].port: 70000 is not a whole number from 1 to 65535"]


def test_duplicate_domain_across_partners() -> None:
    text = ("domains: [a.example]\npartners:\n  - domain: b.example\n    type: federated\n"
            "  - domain: c.example\n    type: federated\n    additional_domains: [B.Example.]\n")
    [problem] = problems(text)
    assert problem.startswith("gw.yaml:5: partners[1]: domain b.example already belongs to "
                              "partner b.example (line 3)")


def test_malformed_yaml() -> None:
    [problem] = problems("domains: [a.example\nlisten: x\n")
    assert problem.startswith("gw.yaml:") and "malformed YAML" in problem


def test_missing_primary_domain() -> None:
    assert problems("domains: [a.example]\npartners:\n  - type: federated\n    tls: required\n") \
        == ["gw.yaml:3: partners[0].domain: is required"]


def test_invalid_combination_uses_the_matrix_words() -> None:
    text = ("domains: [a.example]\npartners:\n  - domain: b.example\n    type: federated\n"
            "    sasl: not-supported\n    dialback: false\n")
    assert problems(text) == [
        "gw.yaml:3: partners[0]: tls=optional, sasl=not-supported, dialback=false is not a "
        "valid combination: SASL or Dialback must be enabled."]


def test_all_problems_are_reported_at_once() -> None:
    found = problems("domans: [a.example]\nlogging: {level: loud}\n")
    assert len(found) == 3  # unknown key, bad level, missing domains


def test_invalid_domain() -> None:
    [problem] = problems("domains: ['bad domain!']\n")
    assert problem.startswith("gw.yaml:1: domains[0]: 'bad domain!' is not a valid domain")


def test_nameserver_must_be_an_address() -> None:
    [problem] = problems("domains: [a.example]\ndns: {nameservers: [dns.google]}\n")
    assert problem.startswith("gw.yaml:2: dns.nameservers: nameserver 'dns.google'")
