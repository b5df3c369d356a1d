"""The partner commands, including all 18 matrix rows through `partner add`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config.loader import load_config
from tests.support.matrix import MatrixRow, matrix_rows

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    shutil.copy(EXAMPLE, path)
    return path


def run(config: Path, *args: str) -> int:
    return main(["-c", str(config), *args])


@pytest.mark.parametrize("row", matrix_rows(), ids=lambda r: r.label)
def test_partner_add_follows_the_matrix(config: Path, row: MatrixRow, capsys) -> None:
    before = config.read_bytes()
    status = run(config, "partner", "add", "new.example", "--type", "federated",
                 "--tls", str(row.tls), "--sasl", str(row.sasl),
                 "--dialback", str(row.dialback).lower())
    out, err = capsys.readouterr()
    if not row.valid:
        assert status == 2
        assert row.notes in err
        assert config.read_bytes() == before, "a refused add must not touch the file"
        return
    assert status == 0, err
    assert "; ".join(row.methods) in out
    if row.notes:
        assert f"warning: {row.notes}" in out
    else:
        assert "warning" not in out
    policy = load_config(config).partner_for("new.example")
    assert policy is not None
    assert (policy.tls, policy.sasl, policy.dialback) == (row.tls, row.sasl, row.dialback)


def test_set_refuses_an_invalid_change_and_keeps_the_file(config: Path, capsys) -> None:
    assert run(config, "partner", "add", "x.example", "--type", "public-verified",
               "--tls", "not-supported", "--sasl", "not-supported") == 0
    before = config.read_bytes()
    assert run(config, "partner", "set", "x.example", "--dialback", "false") == 2
    assert "SASL or Dialback must be enabled." in capsys.readouterr().err
    assert config.read_bytes() == before


def test_edits_keep_comments_and_other_entries(config: Path) -> None:
    assert run(config, "partner", "add", "x.example", "--type", "federated",
               "--additional-domain", "muc.x.example", "--description", "X Corp") == 0
    assert run(config, "partner", "set", "x.example", "--tls", "required",
               "--remove-domain", "muc.x.example") == 0
    text = config.read_text()
    assert "# Federation partners (GATEWAY-SPEC §2)." in text
    assert "# XEP-0185 secret for dialback keys." in text
    loaded = load_config(config)
    assert [p.primary_domain for p in loaded.partners] == ["prosody.localhost", "x.example"]
    assert loaded.partner_for("x.example").additional_domains == ()  # type: ignore[union-attr]
    assert run(config, "partner", "remove", "x.example") == 0
    assert load_config(config).partner_for("x.example") is None


def test_duplicate_domain_is_refused(config: Path, capsys) -> None:
    before = config.read_bytes()
    assert run(config, "partner", "add", "other.example", "--type", "federated",
               "--additional-domain", "conference.prosody.localhost") == 2
    assert "already belongs to partner prosody.localhost" in capsys.readouterr().err
    assert config.read_bytes() == before


def test_show_list_and_unknown(config: Path, capsys) -> None:
    assert run(config, "partner", "list") == 0
    out = capsys.readouterr().out
    assert "prosody.localhost, conference.prosody.localhost" in out
    assert "SASL over TLS; TLS Dialback; TCP Dialback" in out
    assert run(config, "partner", "show", "conference.prosody.localhost") == 0
    assert "prosody.localhost" in capsys.readouterr().out
    assert run(config, "partner", "show", "nobody.example") == 1
    assert run(config, "partner", "remove", "nobody.example") == 1
    assert "not a partner" in capsys.readouterr().err


def test_check_config(config: Path, capsys) -> None:
    assert run(config, "check", "config") == 0
    out = capsys.readouterr().out
    assert "valid; serving gateway.localhost" in out
    assert "permits SASL over TLS; TLS Dialback; TCP Dialback" in out
    config.write_text(config.read_text().replace("level: info", "level: loud"))
    assert run(config, "check", "config") == 1
    assert "logging.level: 'loud' is not one of debug, info, warning, error" in \
        capsys.readouterr().out
