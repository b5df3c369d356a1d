"""``check connectivity``: a downgrade from SASL EXTERNAL is called one, and its hint
names the real cause (our certificate's names vs the partner's trust) with a command that
confirms it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import devcerts
from gateway.config.loader import load_config_text
from gateway.net.downgrade import explain


def config_with_certificate(tmp_path: Path, names: list[str], sasl: str = "optional"):
    ca, ca_key = devcerts.make_ca("contoso lab CA", key_type="ec")
    cert, key = devcerts.issue_certificate(ca, ca_key, names, key_type="ec")
    devcerts.write_key_and_cert(tmp_path / "gw.crt", tmp_path / "gw.key", cert, key)
    (tmp_path / "ca.crt").write_bytes(devcerts.certificates_to_pem([ca]))
    return load_config_text(
        "domains: [contoso.example]\n"
        "tls: {certificate: gw.crt, key: gw.key, ca_file: ca.crt}\n"
        "partners:\n"
        f"  - {{domain: fabrikam.example, type: federated, tls: optional, sasl: {sasl}}}\n",
        base_dir=tmp_path)


def answer(method: str = "TLS Dialback", *, tls: bool = True, peer_ok: bool = True,
           ok: bool = True, verdict: str = "") -> dict:
    steps = ["partner policy: …", "TCP connect 192.0.2.20:5269: ok in 1 ms"]
    if tls:
        steps += ["TLS: TLSv1.3 TLS_AES_256_GCM_SHA384",
                  "certificate: valid — DNS-ID fabrikam.example matches fabrikam.example"
                  if peer_ok else
                  "certificate: NOT valid — issuer not trusted (issuer CN=Fabrikam CA of …)"]
    return {"domain": "fabrikam.example", "ok": ok, "method": method if ok else None,
            "steps": steps, "hint": "",
            "verdict": verdict or f"OK: contoso.example → fabrikam.example authenticated "
                                  f"with {method}"}


def test_our_name_mismatch_is_named_and_fixed_here(tmp_path: Path) -> None:
    config = config_with_certificate(tmp_path, ["gw.contoso.example"])
    verdict, hint = explain(answer(), config, "contoso.example")
    assert verdict.startswith("OK via TLS Dialback — SASL EXTERNAL was refused because our "
                              "certificate does not name contoso.example: name mismatch "
                              "(presented: gw.contoso.example")
    assert "issue a certificate for contoso.example" in hint
    assert "give them our CA" not in hint and "give the partner" not in hint
    assert hint.endswith("confirm with: xmpp-gateway check certs --no-partners")


def test_an_untrusted_issuer_is_the_partner_s_to_fix(tmp_path: Path) -> None:
    config = config_with_certificate(tmp_path, ["contoso.example"])
    verdict, hint = explain(answer(), config, "contoso.example")
    assert verdict == ("OK via TLS Dialback — SASL EXTERNAL was refused because the partner "
                       "does not accept our certificate, which names contoso.example "
                       "correctly: it does not trust its issuer (CN=contoso lab CA)")
    assert hint.startswith(f"give the partner {tmp_path / 'ca.crt'} (Prosody: ssl = "
                           "{ cafile = ... }; ejabberd: ca_file)")
    assert f"openssl verify -CAfile PARTNER_CA_FILE {tmp_path / 'gw.crt'}" in hint


def test_the_partner_s_certificate_failing_here(tmp_path: Path) -> None:
    config = config_with_certificate(tmp_path, ["contoso.example"])
    verdict, hint = explain(answer(peer_ok=False), config, "contoso.example")
    assert verdict.startswith("OK via TLS Dialback — SASL EXTERNAL was refused because "
                              "fabrikam.example's certificate did not verify here: issuer "
                              "not trusted")
    assert hint.startswith("add the CA that issued fabrikam.example's certificate to "
                           "tls.ca_file")


def test_no_tls_at_all(tmp_path: Path) -> None:
    config = config_with_certificate(tmp_path, ["contoso.example"])
    verdict, _ = explain(answer("TCP Dialback", tls=False), config, "contoso.example")
    assert verdict == ("OK via TCP Dialback — SASL EXTERNAL was not possible because "
                       "fabrikam.example offered no TLS")


@pytest.mark.parametrize("method", ["SASL over TLS"])
def test_sasl_is_plain_ok(tmp_path: Path, method: str) -> None:
    config = config_with_certificate(tmp_path, ["contoso.example"])
    result = answer(method)
    assert explain(result, config, "contoso.example") == (result["verdict"], "")


def test_dialback_where_sasl_is_not_permitted_is_no_downgrade(tmp_path: Path) -> None:
    config = config_with_certificate(tmp_path, ["gw.contoso.example"], sasl="not-supported")
    result = answer()
    assert explain(result, config, "contoso.example") == (result["verdict"], "")


def test_a_sasl_failure_gets_the_hint_of_its_real_cause(tmp_path: Path) -> None:
    """sasl=required, our certificate for the wrong name: the partner does not offer SASL
    EXTERNAL; the hint must not send the admin to the partner with our CA."""
    config = config_with_certificate(tmp_path, ["gw.contoso.example"], sasl="required")
    failed = answer(ok=False, verdict="FAILED: cannot authenticate: fabrikam.example did "
                                      "not offer SASL EXTERNAL")
    verdict, hint = explain(failed, config, "contoso.example")
    assert verdict == failed["verdict"]
    assert hint.startswith("our certificate does not name contoso.example")
