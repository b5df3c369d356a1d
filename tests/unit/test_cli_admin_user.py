"""``xmpp-gateway admin-user …``: the console's accounts, made from the command line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from gateway.admin_web.accounts import AccountFile, Role
from gateway.cli.main import main


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real Argon2id, with test-sized parameters (the defaults take 64 MiB per hash)."""
    monkeypatch.setattr("gateway.admin_web.accounts.PasswordHasher",
                        lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "gateway.yaml"
    path.parent.mkdir()
    path.write_text("domains: [gw.example]\nadmin_web: {enabled: true}\n")
    return path


def run(config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        *args: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = main(["-c", str(config), "admin-user", *args])
    out, err = capsys.readouterr()
    return status, out.strip(), err.strip()


def test_accounts_are_made_beside_the_configuration(
        config: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    accounts = config.parent / "admin-users"
    assert run(config, monkeypatch, capsys, "list")[1] == (
        f"no accounts in {accounts} (add one with: xmpp-gateway admin-user add NAME)")
    assert run(config, monkeypatch, capsys, "add", "ada", "--password-stdin",
               stdin="a long password\n") == (0, f"added ada (admin) to {accounts}", "")
    assert run(config, monkeypatch, capsys, "add", "rita", "--role", "read-only",
               "--password-stdin", stdin="another long one\n")[0] == 0
    assert run(config, monkeypatch, capsys, "list")[1] == "ada  admin\nrita  read-only"
    assert accounts.stat().st_mode & 0o777 == 0o600
    assert AccountFile(accounts).verify("ada", "a long password") is not None

    assert run(config, monkeypatch, capsys, "add", "ada", "--password-stdin",
               stdin="a long password\n") == (
        1, "", "error: account ada already exists (admin-user passwd changes its password)")
    assert run(config, monkeypatch, capsys, "passwd", "ada", "--password-stdin",
               stdin="a new long password\n")[0] == 0
    assert AccountFile(accounts).verify("ada", "a new long password") is not None
    assert AccountFile(accounts).verify("ada", "a long password") is None
    assert run(config, monkeypatch, capsys, "role", "rita", "admin")[1] == \
        "rita is now admin (its open console sessions end)"
    assert AccountFile(accounts).get("rita").role is Role.ADMIN
    assert run(config, monkeypatch, capsys, "remove", "ada")[0] == 0
    assert run(config, monkeypatch, capsys, "remove", "ada") == (
        1, "", f"error: no account 'ada' in {accounts}")


@pytest.mark.parametrize(("args", "stdin", "error"), [
    (("add", "ada", "--password-stdin"), "short\n",
     "error: a console password needs at least 10 characters"),
    (("add", "ad:a", "--password-stdin"), "a long password\n",
     "error: 'ad:a' is not an account name"),
    (("passwd", "nobody", "--password-stdin"), "a long password\n",
     "error: no account 'nobody' in"),
])
def test_refusals_change_nothing(config: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                 stdin: str, error: str) -> None:
    status, _out, err = run(config, monkeypatch, capsys, *args, stdin=stdin)
    assert status == 1 and err.startswith(error)
    assert not (config.parent / "admin-users").exists()


def test_the_password_is_asked_twice(config: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter(["a long password", "a long passwort"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    status, _out, err = run(config, monkeypatch, capsys, "add", "ada")
    assert status == 1 and "the two passwords differ" in err and "nothing changed" in err
    assert not (config.parent / "admin-users").exists()
