"""contacts/users commands over the real SQLite store."""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway.cli.main import main
from gateway.config.loader import load_config
from gateway.store import open_authorization_store

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"


def test_contacts_and_users(tmp_path: Path, capsys) -> None:
    config = tmp_path / "gateway.yaml"
    shutil.copy(EXAMPLE, config)
    run = lambda *a: main(["-c", str(config), *a])  # noqa: E731
    assert run("contacts", "allow", "alice", "Bob@Public.Example/phone") == 0
    assert run("contacts", "list", "alice") == 0
    assert "bob@public.example" in capsys.readouterr().out
    assert run("users", "disable", "alice@gateway.localhost") == 0
    store = open_authorization_store(load_config(config).store)
    try:
        assert store.is_authorized("alice@gateway.localhost", "bob@public.example")
        assert store.user_enabled("alice@gateway.localhost", True) is False
    finally:
        store.close()
    assert run("contacts", "revoke", "alice", "bob@public.example") == 0
    assert run("contacts", "allow", "eve@elsewhere.example", "x@y.example") == 2
    assert "not a user of a served domain" in capsys.readouterr().err
