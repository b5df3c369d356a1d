"""The SIP trust policy (pure parts) and its configuration keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.auth import devcerts
from gateway.config.loader import ConfigError, config_warnings, load_config_text
from gateway.sip.message import SipRequest, parse_message
from gateway.sip.trust import (
    RefusalLogBudget,
    SourceTrust,
    asserted_sender,
    certificate_names_match,
    parse_network,
    refusal_for,
)

REQUEST = (b"MESSAGE sip:bob@xmpp.example SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 127.0.0.11:5060;branch=z9hG4bKx\r\n"
           b"From: <sip:ceo@sip.example>;tag=a\r\nTo: <sip:bob@xmpp.example>\r\n"
           b"Call-ID: c1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")


def test_source_trust_is_the_proxy_and_the_listed_networks() -> None:
    trust = SourceTrust.build(["10.0.0.5"], ["10.0.1.0/29", "2001:db8::7"])
    assert trust.is_trusted("10.0.0.5") and trust.is_trusted("10.0.1.7")
    assert trust.is_trusted("::ffff:10.0.0.5")  # IPv4 peer on a dual-stack socket
    assert trust.is_trusted("2001:db8::7")
    assert not trust.is_trusted("10.0.1.8") and not trust.is_trusted("10.0.0.6")
    assert not trust.is_trusted("") and not trust.is_trusted("not-an-address")
    assert not SourceTrust.build([], []).is_trusted("127.0.0.1")


@pytest.mark.parametrize(("text", "message"), [
    ("10.0.0.7/24", "'10.0.0.7/24' has bits set after the /24 prefix; write 10.0.0.0/24"),
    ("proxy.example", "'proxy.example' is not an IP address or network"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address or network"),
    ("", "is empty"),
])
def test_bad_networks_are_explained(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_network(text)
    assert str(info.value).startswith(message)


def test_refusal_answers_requests_only() -> None:
    answer, method = refusal_for(REQUEST, stream=False)
    response = parse_message(answer or b"")
    assert method == "MESSAGE" and response.status == 403  # type: ignore[union-attr]
    assert response.call_id == "c1" and response.to.tag
    assert refusal_for(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
                       b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c\r\n"
                       b"CSeq: 1 MESSAGE\r\n\r\n", stream=False) == (None, "response")
    assert refusal_for(REQUEST.replace(b"MESSAGE", b"ACK"), stream=False) == (None, "ACK")
    assert refusal_for(b"\x16\x03\x01 garbage", stream=False) == (None, "unparseable")


def test_asserted_sender_picks_the_sip_uri() -> None:
    request = parse_message(REQUEST.replace(
        b"Content-Length", b'P-Asserted-Identity: "Boss" <tel:+1555>, <sip:cfo@sip.example>'
                           b"\r\nContent-Length"))
    assert isinstance(request, SipRequest)
    assert asserted_sender(request) == "sip:cfo@sip.example"
    plain = parse_message(REQUEST)
    assert isinstance(plain, SipRequest) and asserted_sender(plain) is None


def test_certificate_names() -> None:
    ca, key = devcerts.make_ca("t", key_type="ec")
    cert, _ = devcerts.issue_certificate(ca, key, ["proxy.example"], key_type="ec")
    der = cert.public_bytes(Encoding.DER)
    assert certificate_names_match(der, ["proxy.example"]) is None
    assert certificate_names_match(der, ["other.example", "PROXY.example"]) is None
    assert certificate_names_match(der, ["other.example"]) == \
        "client certificate names proxy.example, not other.example"
    assert certificate_names_match(None, ["proxy.example"]) == "no client certificate presented"


# ------------------------------------------------------------------ configuration

BASE = "domains: [sip.example]\nsip:\n  backend: sip\n"


def test_trust_keys_load() -> None:
    config = load_config_text(BASE + "  trusted_sources: [10.0.0.0/29, '::1']\n"
                              "  trusted_names: [Proxy.Example, 10.0.0.5]\n"
                              "  require_client_certificate: true\n"
                              "  trust_asserted_identity: true\n"
                              "  client_certificate: c.crt\n  client_key: c.key\n",
                              base_dir=Path("/etc/gw"))
    sip = config.sip
    assert sip.trusted_sources == ("10.0.0.0/29", "::1")
    assert sip.trusted_names == ("proxy.example", "10.0.0.5")
    assert sip.require_client_certificate and sip.trust_asserted_identity
    assert (sip.client_certificate, sip.client_key) == (Path("/etc/gw/c.crt"),
                                                        Path("/etc/gw/c.key"))
    default = load_config_text(BASE).sip
    assert (default.trusted_sources, default.require_client_certificate,
            default.trust_asserted_identity, default.client_certificate) == ((), False, False,
                                                                            None)


def test_bad_trust_keys_are_reported_with_lines() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE + "  trusted_sources:\n    - 10.0.0.1\n    - 10.0.0.7/24\n"
                         "  trusted_names: ['bad name!']\n  client_key: k.key\n",
                         source=Path("gw.yaml"))
    texts = [str(p) for p in info.value.problems]
    assert any(t.startswith("gw.yaml:6: sip.trusted_sources[1]: '10.0.0.7/24' has bits "
                               "set after the /24 prefix; write 10.0.0.0/24") for t in texts), texts
    assert any(t.startswith("gw.yaml:7: sip.trusted_names[0]: 'bad name!' is not a valid "
                            "domain") for t in texts), texts
    assert any("sip.client_key: is set without sip.client_certificate" in t for t in texts)


def sip_warnings(extra: str) -> list[str]:
    config = load_config_text(BASE + extra)
    return [w for w in config_warnings(config) if w.startswith("sip.")]


def test_check_config_warns_about_an_exposed_sip_side() -> None:
    [exposed] = sip_warnings("  local_host: 0.0.0.0\n")
    assert exposed.startswith("sip.local_host 0.0.0.0 is reachable beyond this host")
    assert "(a UDP source is trivially forged)" in exposed
    assert sip_warnings("  local_host: 127.0.0.1\n") == []
    assert sip_warnings("  local_host: 10.0.0.2\n  trusted_sources: [10.0.0.5]\n") == []
    assert sip_warnings("  local_host: 10.0.0.2\n  transport: tls\n"
                        "  require_client_certificate: true\n") == []
    [no_effect] = sip_warnings("  require_client_certificate: true\n")
    assert no_effect == ("sip.require_client_certificate has no effect with sip.transport "
                         "udp (it applies to tls only)")
    [pai] = sip_warnings("  trust_asserted_identity: true\n")
    assert "must remove P-Asserted-Identity from its users' requests" in pai


def test_check_config_prints_the_sip_warning(tmp_path: Path, capsys) -> None:
    from gateway.cli.main import main

    path = tmp_path / "gateway.yaml"
    path.write_text(BASE + "  local_host: 192.0.2.10\n  transport: tcp\n")
    assert main(["-c", str(path), "check", "config"]) == 0
    out = capsys.readouterr().out
    assert ("warning: sip.local_host 192.0.2.10 is reachable beyond this host, and SIP "
            "requests are trusted on their source address alone (the addresses of "
            "sip.proxy_host 127.0.0.1), which TCP does not prove") in out


def test_refusal_log_budget() -> None:
    budget = RefusalLogBudget(per_second=2)
    assert [budget.allow(10.0 + i / 100) for i in range(5)] == [
        (True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    assert budget.allow(11.0) == (True, 3)  # next second: the 3 unlogged are reported
    assert budget.allow(11.1) == (True, 0)
