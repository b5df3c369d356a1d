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
