"""`xmpp-gateway check config` and the check registry."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from gateway.cli import check
from gateway.cli.main import main

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "gateway.yaml"
    path.parent.mkdir()
    shutil.copy(EXAMPLE, path)
    return path


def run(config: Path, *args: str) -> int:
    return main(["-c", str(config), *args])


def test_valid_config_lists_methods_and_warnings(config: Path, capsys) -> None:
    assert run(config, "check", "config") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{config}: valid; serving gateway.localhost; 1 partner(s)"
    assert lines[1] == ("  prosody.localhost, conference.prosody.localhost (federated): "
                        "tls=optional sasl=optional dialback=true → permits SASL over TLS; "
                        "TLS Dialback; TCP Dialback")
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings[0] == ("warning: partner prosody.localhost: SASL requires TLS. Allowing "
                           "TLS to be optional may result in failed session negotiations.")
    # The copy has no ../certs beside it: said, not fatal.
    certificate = config.parent.parent / "certs" / "gateway.crt"
    assert f"warning: tls.certificate {certificate} does not exist: STARTTLS will not be " \
           "offered (make certs creates development certificates)" in warnings


def test_matrix_warnings_of_every_partner(config: Path, capsys) -> None:
    assert run(config, "partner", "add", "b.example", "--type", "federated", "--tls",
               "not-supported", "--sasl", "not-supported") == 0
    assert run(config, "partner", "add", "c.example", "--type", "federated", "--tls",
               "required", "--sasl", "optional") == 0
    capsys.readouterr()
    assert run(config, "check", "config") == 0
    out = capsys.readouterr().out
    assert "  b.example (federated): tls=not-supported sasl=not-supported dialback=true → " \
           "permits TCP Dialback\n" in out
    assert "warning: partner b.example: TCP Dialback is the only negotiation method " \
           "available\n" in out
    assert "  c.example (federated): tls=required sasl=optional dialback=true → permits " \
           "SASL over TLS; TLS Dialback\n" in out
    assert "partner c.example:" not in out  # that row has no note


def test_invalid_config_prints_every_error_with_file_and_line(config: Path, capsys) -> None:
    text = config.read_text().replace("level: info", "level: loud").replace(
        "    tls: optional ", "    tls: requird ")
    config.write_text(text)
    level_line = next(i for i, line in enumerate(text.splitlines(), 1) if "level: loud" in line)
    tls_line = next(i for i, line in enumerate(text.splitlines(), 1) if "tls: requird" in line)
    assert run(config, "check", "config") == 1
    assert capsys.readouterr().out.splitlines() == [
        f"error: {config}:{level_line}: logging.level: 'loud' is not one of debug, info, "
        "warning, error",
        f"error: {config}:{tls_line}: partners[0].tls: 'requird' is not one of required, "
        "optional, not-supported",
        f"{config}: INVALID (2 problem(s))",
    ]


def test_missing_file(tmp_path: Path, capsys) -> None:
    assert run(tmp_path / "nope.yaml", "check", "config") == 1
    assert "No such file or directory" in capsys.readouterr().out


def test_the_built_in_checks_are_registered() -> None:
    assert list(check.CHECKS)[:4] == ["config", "connectivity", "dns", "certs"]


def test_another_module_can_add_a_check(config: Path, capsys) -> None:
    seen: list[argparse.Namespace] = []

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--level", type=int, default=1)

    def handler(args: argparse.Namespace) -> int:
        seen.append(args)
        print(f"checked {args.config} at level {args.level}")
        return 3

    check.add_check("example-for-test", "a check added from outside", configure, handler)
    try:
        assert run(config, "check", "example-for-test", "--level", "2") == 3
        assert capsys.readouterr().out == f"checked {config} at level 2\n"
        assert seen[0].config == config
        # Added after a parser was built: the live parser gets it too.
        parser_choices = check._live[-1].choices
        check.add_check("late-for-test", "added late", None, lambda args: 0)
        assert "late-for-test" in parser_choices
    finally:
        check.CHECKS.pop("example-for-test", None)
        check.CHECKS.pop("late-for-test", None)


# ------------------------------------------------------------ certificates as they enter


def _certificates(config: Path, names: list[str], *, trusted: bool = True) -> None:
    """A CA and a gateway certificate naming ``names``, where the example config points
    (../certs); the CA is tls.ca_file only when ``trusted``."""
    from gateway.auth import devcerts

    certs = config.parent.parent / "certs"
    ca, ca_key = devcerts.make_ca("check test CA", key_type="ec")
    cert, key = devcerts.issue_certificate(ca, ca_key, names, key_type="ec")
    devcerts.write_key_and_cert(certs / "gateway.crt", certs / "gateway.key", cert, key)
    other = devcerts.make_ca("someone else's CA", key_type="ec")[0]
    (certs / "ca.crt").write_bytes(devcerts.certificates_to_pem([ca if trusted else other]))
    config.write_text(config.read_text().replace("use_system_cas: true",
                                                 "use_system_cas: false"))


def test_check_config_refuses_a_certificate_that_does_not_name_the_domain(
        config: Path, capsys) -> None:
    """A certificate for gw.gateway.localhost copied in by hand gives TLS but no SASL
    EXTERNAL: check config says so, with the exact mismatch, and fails."""
    _certificates(config, ["gw.gateway.localhost"])
    assert run(config, "check", "config") == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{config}: INVALID; serving gateway.localhost; 1 partner(s)"
    certificate = config.parent.parent / "certs" / "gateway.crt"
    assert (f"error: tls.certificate {certificate} does not authenticate served domain "
            "gateway.localhost: name mismatch (presented: gw.gateway.localhost; expected: "
            "gateway.localhost); partners will refuse SASL EXTERNAL") in out
    assert "  fix: xmpp-gateway cert issue" in out
    _certificates(config, ["gateway.localhost"])
    assert run(config, "check", "config") == 0


def test_check_certs_advice_matches_the_problem_and_its_options(config: Path, capsys) -> None:
    _certificates(config, ["gw.gateway.localhost"])
    assert run(config, "check", "certs", "--no-partners") == 1
    out = capsys.readouterr().out
    assert "FAIL  covers gateway.localhost: name mismatch" in out
    assert "issue a certificate naming every served domain: xmpp-gateway cert issue" in out
    assert "--chain" not in out  # nothing to do with a chain, and check certs has no such option
    _certificates(config, ["gateway.localhost"], trusted=False)
    assert run(config, "check", "certs", "--no-partners") == 1
    out = capsys.readouterr().out
    assert "FAIL  the chain does not verify to a trusted root" in out
    assert "xmpp-gateway cert import CERTIFICATE --chain CHAIN" in out  # import's option
    assert "put that CA's certificate in tls.ca_file" in out


# ------------------------------------------------------------ check, with no argument


def test_check_alone_runs_everything_with_one_verdict(config: Path, capsys,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _certificates(config, ["gateway.localhost"])
    config.write_text(config.read_text().replace(
        "nameservers: []", "nameservers: ['127.0.0.1:9']").replace("timeout: 5.0",
                                                                   "timeout: 0.2"))
    assert run(config, "check") == 1
    out = capsys.readouterr().out
    headings = [line for line in out.splitlines() if line.startswith("== ")]
    assert headings == ["== config ==", "== certs ==", "== dns ==", "== sip =="]
    assert "certificates: OK" in out
    assert out.splitlines()[-1].startswith("verdict: PROBLEMS in dns (details above); "
                                           "connectivity not checked: no gateway answering")
    # Without that problem (DNS answered here by a stand-in: the real check is tested
    # against dnsmasq): OK, and it says that connectivity needs the running gateway.
    monkeypatch.setitem(check.CHECKS, "dns", check.Check("dns", "test", None, lambda _: 0))
    assert run(config, "check") == 0
    verdict = capsys.readouterr().out.splitlines()[-1]
    assert verdict.startswith("verdict: OK (config, certs, dns, sip); connectivity not "
                              "checked: no gateway answering on ")
    assert verdict.endswith("start it (xmpp-gateway start) and run check again")


def test_check_alone_stops_at_an_invalid_configuration(config: Path, capsys) -> None:
    config.write_text(config.read_text().replace("level: info", "level: loud"))
    assert run(config, "check") == 1
    out = capsys.readouterr().out
    assert "== certs ==" not in out
    assert out.splitlines()[-1] == (f"verdict: the configuration is invalid; nothing else "
                                    f"was checked ({config})")
