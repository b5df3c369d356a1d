"""Bad configuration files get precise errors with line numbers; good ones load fully."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.config.loader import (
    ConfigError,
    ConfigProblem,
    config_warnings,
    load_config,
    load_config_text,
)
from gateway.config.model import PartnerType
from gateway.policy.negotiation import Support

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source=Path("gw.yaml"))
    return [str(p) for p in info.value.problems]


def only_problem(text: str) -> ConfigProblem:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source=Path("gw.yaml"))
    [problem] = info.value.problems
    return problem


# ------------------------------------------------------------------ good files


def test_the_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    root = EXAMPLE.parent.parent
    assert config.domains == ("gateway.localhost",)
    assert config.listen[0].host == "127.0.0.1" and config.listen[0].port == 5269
    assert config.tls.certificate == root / "certs" / "gateway.crt"
    assert config.tls.key == root / "certs" / "gateway.key"
    assert config.store.path == root / "data" / "gateway.sqlite3"
    assert config.admin_socket == root / "run" / "gateway.sock"
    assert config.sip.backend == "development"
    assert config.source == EXAMPLE
    partner = config.partner_for("conference.prosody.localhost")
    assert partner is not None and partner.primary_domain == "prosody.localhost"


def test_every_key_of_the_contract_is_read() -> None:
    text = """\
domains: [GW.Example.]
listen:
  - {host: 127.0.0.4, port: 5270, direct_tls: true}
tls:
  certificate: c.crt
  key: /abs/c.key
  ca_file: ca.crt
  use_system_cas: false
  min_version: "1.3"
  per_domain: {gw.example: {certificate: o.crt, key: o.key}}
dialback: {secret: s3cret}
dns: {nameservers: ["127.0.0.53", "127.0.0.1:5353"], timeout: 2, direct_tls: false}
store: {path: db/x.sqlite3}
sip: {backend: sip, proxy_host: 10.0.0.1, proxy_port: 5070, transport: tcp,
      local_host: 10.0.0.2, local_port: 5072}
logging: {level: debug, format: json, file: log/gw.log}
limits: {max_stanza_bytes: 1000, max_depth: 8, negotiation_timeout: 5, idle_timeout: 60,
         keepalive_interval: 30, inbound_bytes_per_second: 0}
federation: {allow_unlisted: true, users_enabled_by_default: false}
admin_socket: gw.sock
metrics: {enabled: true, host: 127.0.0.1, port: 9300}
partners:
  - domain: A.Example
    type: public-verified
    tls: required
    sasl: not-supported
    dialback: true
    additional_domains: [conference.a.example]
    description: "Partner A"
"""
    config = load_config_text(text, base_dir=Path("/etc/gw"))
    assert config.domains == ("gw.example",)
    assert config.listen[0].direct_tls and config.listen[0].port == 5270
    assert config.tls.certificate == Path("/etc/gw/c.crt")
    assert config.tls.key == Path("/abs/c.key")
    assert config.tls.ca_file == Path("/etc/gw/ca.crt")
    assert config.tls.min_version == "1.3" and not config.tls.use_system_cas
    assert config.tls.per_domain["gw.example"].key == Path("/etc/gw/o.key")
    assert config.dialback.secret == "s3cret"
    assert config.dns.nameservers == ("127.0.0.53", "127.0.0.1:5353")
    assert config.dns.timeout == 2.0 and not config.dns.direct_tls
    assert config.store.path == Path("/etc/gw/db/x.sqlite3")
    assert (config.sip.backend, config.sip.proxy_port, config.sip.transport) == (
        "sip", 5070, "tcp")
    assert (config.logging.level, config.logging.format) == ("debug", "json")
    assert config.logging.file == Path("/etc/gw/log/gw.log")
    assert config.limits.max_depth == 8 and config.limits.negotiation_timeout == 5.0
    assert config.federation.allow_unlisted and not config.federation.users_enabled_by_default
    assert config.admin_socket == Path("/etc/gw/gw.sock")
    assert config.metrics.enabled and config.metrics.port == 9300
    [partner] = config.partners
    assert partner.primary_domain == "a.example"
    assert partner.partner_type is PartnerType.PUBLIC_VERIFIED
    assert (partner.tls, partner.sasl, partner.dialback) == (
        Support.REQUIRED, Support.NOT_SUPPORTED, True)
    assert partner.additional_domains == ("conference.a.example",)
    assert partner.description == "Partner A"


def test_partner_defaults_follow_the_spec() -> None:
    config = load_config_text("domains: [a.example]\npartners:\n"
                              "  - {domain: b.example, type: federated}\n")
    [partner] = config.partners
    assert (partner.tls, partner.sasl, partner.dialback) == (
        Support.OPTIONAL, Support.OPTIONAL, True)
    assert partner.additional_domains == () and partner.description == ""


def test_file_relative_defaults_also_with_a_partial_tls_section(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "gw.yaml"
    conf.parent.mkdir()
    conf.write_text("domains: [a.example]\ntls: {use_system_cas: false}\n")
    config = load_config(conf)
    assert config.tls.certificate == tmp_path / "certs" / "gateway.crt"
    assert config.store.path == tmp_path / "data" / "gateway.sqlite3"
    assert config.admin_socket == tmp_path / "run" / "gateway.sock"


# ------------------------------------------------------------------ precise errors


def test_unknown_key_with_suggestion() -> None:
    assert problems("domains: [a.example]\nlisten:\n  - host: 127.0.0.1\n    prot: 5269\n") == [
        "gw.yaml:4: listen[0].prot: unknown key — did you mean 'port'? (allowed: direct_tls, "
        "host, port)"]


def test_unknown_partner_key_with_suggestion() -> None:
    problem = only_problem("domains: [a.example]\npartners:\n  - domain: b.example\n"
                           "    type: federated\n    additional_domain: [c.example]\n")
    assert problem.line == 5
    assert problem.key_path == "partners[0].additional_domain"
    assert "did you mean 'additional_domains'?" in problem.message


def test_wrong_value_names_allowed_values() -> None:
    text = "domains: [a.example]\npartners:\n  - domain: b.example\n    type: federated\n" \
           "    sasl: maybe\n"
    problem = only_problem(text)
    assert str(problem) == \
        "gw.yaml:5: partners[0].sasl: 'maybe' is not one of required, optional, not-supported"
    assert (problem.file, problem.line, problem.key_path, problem.value, problem.allowed) == (
        "gw.yaml", 5, "partners[0].sasl", "maybe", ("required", "optional", "not-supported"))


def test_brief_example_message() -> None:
    lines = ["domains: [a.example]", "partners:",
             "  - {domain: b.example, type: federated}",
             "  - domain: c.example", "    type: federated", "    tls: requird"]
    assert problems("\n".join(lines) + "\n") == [
        "gw.yaml:6: partners[1].tls: 'requird' is not one of required, optional, not-supported"]


def test_booleans_are_yaml_booleans() -> None:
    assert problems("domains: [a.example]\npartners:\n  - domain: b.example\n"
                    "    type: federated\n    dialback: yes\n") == [
        "gw.yaml:5: partners[0].dialback: 'yes' is not one of true, false"]


def test_port_out_of_range() -> None:
    assert problems("domains: [a.example]\nlisten: [{host: x, port: 70000}]\n") == [
        "gw.yaml:2: listen[0].port: 70000 is not a whole number from 1 to 65535"]


def test_durations_must_be_positive() -> None:
    assert problems("domains: [a.example]\nlimits:\n  idle_timeout: 0\n"
                    "  negotiation_timeout: -1\n  max_depth: 0\n") == [
        "gw.yaml:3: limits.idle_timeout: 0 is not a positive number of seconds",
        "gw.yaml:4: limits.negotiation_timeout: -1 is not a positive number of seconds",
        "gw.yaml:5: limits.max_depth: 0 is not a whole number of at least 1"]


def test_duplicate_domain_across_partners() -> None:
    text = ("domains: [a.example]\npartners:\n  - domain: b.example\n    type: federated\n"
            "  - domain: c.example\n    type: federated\n    additional_domains:\n"
            "      - d.example\n      - B.Example.\n")
    assert problems(text) == [
        "gw.yaml:9: partners[1].additional_domains[1]: b.example already belongs to partner "
        "b.example (partners[0], line 3); a domain may belong to one partner only"]


def test_domain_listed_twice_in_one_partner() -> None:
    problem = only_problem("domains: [a.example]\npartners:\n  - domain: b.example\n"
                           "    type: federated\n    additional_domains: [B.EXAMPLE]\n")
    assert str(problem) == ("gw.yaml:5: partners[0].additional_domains[0]: b.example is listed "
                            "twice in this partner (also line 3)")


def test_served_domain_cannot_be_a_partner() -> None:
    text = "domains:\n  - a.example\npartners:\n  - domain: A.Example.\n    type: federated\n"
    assert problems(text) == [
        "gw.yaml:4: partners[0].domain: a.example is served by this gateway (domains, line 2) "
        "and cannot be a partner"]


def test_served_domain_listed_twice() -> None:
    assert problems("domains:\n  - a.example\n  - A.EXAMPLE\n") == [
        "gw.yaml:3: domains[1]: a.example is listed twice (also line 2)"]


def test_malformed_yaml() -> None:
    problem = only_problem("domains: [a.example\nlisten: x\n")
    assert problem.line == 2 and problem.message.startswith("malformed YAML: ")


def test_tab_indentation_is_malformed_yaml_with_its_line() -> None:
    assert problems("domains:\n\t- a.example\n")[0].startswith(
        "gw.yaml:2: malformed YAML: found character '\\t' that cannot start any token")


def test_duplicate_key() -> None:
    assert problems("domains: [a.example]\nlogging: {level: info}\ndomains: [b.example]\n") == [
        "gw.yaml:3: duplicate key 'domains' (first written on line 1); write each key once"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_bytes(b"domains: [a.example]\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: not UTF-8 text (byte 0xe9 at offset 26)"


def test_missing_primary_domain() -> None:
    assert problems("domains: [a.example]\npartners:\n  - type: federated\n    tls: required\n") \
        == ["gw.yaml:3: partners[0].domain: is required"]


def test_missing_served_domains() -> None:
    assert problems("listen: [{host: 127.0.0.1, port: 5269}]\n") == [
        "gw.yaml:1: domains: is required"]
    assert problems("domains: []\n") == [
        "gw.yaml:1: domains: must name at least one served domain"]


@pytest.mark.parametrize(("tls", "sasl", "dialback", "words"), [
    ("not-supported", "required", "false", "Because SASL requires TLS, and TLS is not "
     "available, SASL/TLS cannot succeed. TCP Dialback is set to false, and cannot be used."),
    ("optional", "not-supported", "false", "SASL or Dialback must be enabled."),
])
def test_invalid_combination_uses_the_matrix_words(tls: str, sasl: str, dialback: str,
                                                   words: str) -> None:
    text = (f"domains: [a.example]\npartners:\n  - domain: b.example\n    type: federated\n"
            f"    tls: {tls}\n    sasl: {sasl}\n    dialback: {dialback}\n")
    assert problems(text) == [
        f"gw.yaml:3: partners[0]: tls={tls}, sasl={sasl}, dialback={dialback} is not a "
        f"valid combination: {words}"]


def test_all_problems_are_reported_at_once() -> None:
    found = problems("domans: [a.example]\nlogging: {level: loud}\n"
                     "partners:\n  - {domain: 'b c', type: friend}\n")
    assert found == [
        "gw.yaml:1: domans: unknown key — did you mean 'domains'? (allowed: admin_socket, "
        "admin_web, cluster, dialback, dns, domains, federation, limits, listen, logging, metrics, "
        "partners, sip, store, tls)",
        "gw.yaml:1: domains: is required",
        "gw.yaml:2: logging.level: 'loud' is not one of debug, info, warning, error",
        "gw.yaml:4: partners[0].domain: 'b c' is not a valid domain: a domain must not "
        "contain white space",
        "gw.yaml:4: partners[0].type: 'friend' is not one of federated, public-verified, "
        "public-unverified",
    ]


def test_invalid_domain() -> None:
    [problem] = problems("domains: ['bad domain!']\n")
    assert problem.startswith("gw.yaml:1: domains[0]: 'bad domain!' is not a valid domain")


def test_nameserver_must_be_an_address() -> None:
    [problem] = problems("domains: [a.example]\ndns:\n  nameservers:\n    - 127.0.0.1\n"
                         "    - dns.google\n")
    assert problem.startswith("gw.yaml:5: dns.nameservers[1]: nameserver 'dns.google'")


def test_per_domain_certificate_for_a_domain_we_do_not_serve() -> None:
    assert problems("domains: [a.example]\ntls:\n  per_domain:\n"
                    "    b.example: {certificate: b.crt, key: b.key}\n") == [
        "gw.yaml:4: tls.per_domain.b.example: b.example is not a served domain, so this "
        "certificate would never be used (served: a.example)"]


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a.example\n") == ["gw.yaml:1: must be a mapping of keys, not a list"]


# ------------------------------------------------------------------ warnings, size


def test_config_warnings(tmp_path: Path) -> None:
    text = ("domains: [a.example]\ntls: {certificate: none.crt, key: none.key, "
            "use_system_cas: false}\npartners:\n"
            "  - {domain: b.example, type: federated, tls: not-supported, sasl: not-supported}\n")
    warnings = config_warnings(load_config_text(text, base_dir=tmp_path))
    assert warnings == [
        "partner b.example: TCP Dialback is the only negotiation method available",
        "tls.use_system_cas is false and no tls.ca_file is set: no peer certificate can "
        "verify, SASL EXTERNAL will never be used",
        f"tls.certificate {tmp_path / 'none.crt'} does not exist: STARTTLS will not be "
        "offered (make certs creates development certificates)",
        f"tls.key {tmp_path / 'none.key'} does not exist: STARTTLS will not be offered "
        "(make certs creates development certificates)",
    ]


def test_an_empty_dialback_secret_matters_only_to_several_nodes(tmp_path: Path) -> None:
    """One node verifies its own dialback keys whatever the secret: no warning; nodes
    sharing a store must share the secret."""
    alone = "domains: [a.example]\npartners: []\n"
    assert not any("dialback.secret" in warning for warning in
                   config_warnings(load_config_text(alone, base_dir=tmp_path)))
    shared = alone + "store: {url: 'postgresql://gw@db.example/gw'}\n"
    assert [warning for warning in config_warnings(load_config_text(shared, base_dir=tmp_path))
            if "dialback.secret" in warning] == [
        "dialback.secret is empty while store.url makes this node one of several: each node "
        "makes a random secret at start, so they cannot verify each other's dialback keys; "
        "give every node the same secret"]


def test_a_large_partner_list_loads_in_linear_time() -> None:
    def text(count: int) -> str:
        lines = ["domains: [gw.example]", "partners:"]
        for i in range(count):
            lines += [f"  - domain: p{i}.example", "    type: federated",
                      f"    additional_domains: [muc.p{i}.example]"]
        return "\n".join(lines) + "\n"

    def seconds(count: int) -> float:
        started = time.perf_counter()
        config = load_config_text(text(count))
        assert len(config.partners) == count
        assert config.partner_for(f"muc.p{count - 1}.example") is not None
        return time.perf_counter() - started

    small, large = seconds(250), seconds(2000)
    assert large < 10, f"2000 partners took {large:.1f} s"
    assert large < small * 8 * 3, f"not linear: 250 → {small:.2f} s, 2000 → {large:.2f} s"


def test_postgresql_store_and_cluster_settings() -> None:
    config = load_config_text(
        "domains: [a.example]\nstore:\n  url: postgresql://gw:pw@db.internal:5432/gateway\n"
        "  pool_size: 8\n  timeout: 2\ncluster:\n  node_id: gw-1\n  lease: 6\n"
        "  heartbeat_interval: 2\n", base_dir=Path("/etc/gw"))
    assert config.store.url == "postgresql://gw:pw@db.internal:5432/gateway"
    assert (config.store.pool_size, config.store.timeout) == (8, 2.0)
    assert (config.cluster.node_id, config.cluster.lease, config.cluster.heartbeat_interval) \
        == ("gw-1", 6.0, 2.0)
    default = load_config_text("domains: [a.example]\n", base_dir=Path("/etc/gw"))
    assert default.store.url == "" and default.cluster.node_id == ""  # SQLite, host name


def test_store_url_must_be_postgresql_and_is_not_echoed() -> None:
    problem = only_problem("domains: [a.example]\nstore:\n"
                           "  url: mysql://gw:secret@db/gateway\n")
    assert str(problem) == ("gw.yaml:3: store.url: mysql://… is not a PostgreSQL URL "
                            "(postgresql://user:password@host:port/dbname); leave it empty "
                            "to use store.path")
    assert "secret" not in str(problem)


def test_cluster_lease_must_cover_two_heartbeats() -> None:
    assert problems("domains: [a.example]\ncluster:\n  lease: 3\n  heartbeat_interval: 2\n"
                    ) == ["gw.yaml: cluster.lease: 3 s is shorter than two heartbeats (2 s "
                          "each): one late heartbeat would declare a live node dead"]
