"""Without -c the configuration is found as prosodyctl finds its own: the environment,
then the system's file, then the checkout's example — never relative to the current
directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main as cli_main


def test_the_environment_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMPP_GATEWAY_CONFIG", str(tmp_path / "mine.yaml"))
    assert cli_main.default_config_path() == tmp_path / "mine.yaml"


def test_then_etc_then_the_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XMPP_GATEWAY_CONFIG", raising=False)
    system = tmp_path / "etc" / "gateway.yaml"
    monkeypatch.setattr(cli_main, "SYSTEM_CONFIG", system)
    assert cli_main.default_config_path() == cli_main.EXAMPLE_CONFIG
    assert cli_main.EXAMPLE_CONFIG.is_absolute() and cli_main.EXAMPLE_CONFIG.is_file()
    system.parent.mkdir()
    system.write_text("domains: [a.example]\n")
    assert cli_main.default_config_path() == system
    monkeypatch.setattr(cli_main, "EXAMPLE_CONFIG", tmp_path / "none.yaml")
    system.unlink()
    assert cli_main.default_config_path() == system  # named in the error


def test_the_current_directory_does_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys) -> None:
    monkeypatch.delenv("XMPP_GATEWAY_CONFIG", raising=False)
    monkeypatch.setattr(cli_main, "SYSTEM_CONFIG", tmp_path / "absent.yaml")
    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["check", "config"]) == 0
    assert capsys.readouterr().out.startswith(f"{cli_main.EXAMPLE_CONFIG}: valid")


def test_a_missing_file_says_where_it_was_looked_for(tmp_path: Path, capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMPP_GATEWAY_CONFIG", str(tmp_path / "gone.yaml"))
    assert cli_main.main(["partner", "list"]) == 1
    assert capsys.readouterr().err == (
        f"xmpp-gateway: no configuration file {tmp_path / 'gone.yaml'} (without -c PATH: "
        f"$XMPP_GATEWAY_CONFIG, else /etc/xmpp-gateway/gateway.yaml, else "
        f"{cli_main.EXAMPLE_CONFIG})\n")
