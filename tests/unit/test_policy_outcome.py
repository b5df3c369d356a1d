"""The matrix's verdict, then what the partner will really use, in the operator's words."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.policy.negotiation import negotiate
from gateway.policy.outcome import in_effect
from tests.support.matrix import MatrixRow, matrix_rows

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
ROWS = matrix_rows()


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.label)
def test_every_valid_row_says_what_the_partner_gets(row: MatrixRow) -> None:
    negotiation = negotiate(row.tls, row.sasl, row.dialback)
    text = in_effect(negotiation)
    if not row.valid:
        assert text == ""  # refused: the matrix's error says why
        return
    assert text.startswith("this partner will ")
    # The words follow the permitted methods, never contradict them.
    assert ("unencrypted TCP dialback" in text) == ("TCP Dialback" in row.methods)
    assert ("SASL EXTERNAL over TLS" in text.split(";")[0]) == ("SASL over TLS" in row.methods)
    assert negotiation.message == row.notes  # the matrix's own text is untouched


def test_tls_not_supported_with_sasl_required_says_plainly_what_happens() -> None:
    assert in_effect(negotiate("not-supported", "required", True)) == (
        "this partner will use unencrypted TCP dialback only (no TLS, no certificates); "
        "sasl=required has no effect (SASL EXTERNAL needs TLS, which tls=not-supported "
        "rules out)")


def test_settings_without_effect_are_named() -> None:
    assert "dialback=true has no effect" in in_effect(negotiate("required", "required", True))
    assert "sasl=required does not stop the dialback fallback" in in_effect(
        negotiate("optional", "required", True))
    assert "tls=optional acts as required" in in_effect(negotiate("optional", "optional", False))
    assert "has no effect" not in in_effect(negotiate("required", "optional", True))


def test_partner_add_prints_the_matrix_text_then_the_outcome(tmp_path: Path, capsys) -> None:
    config = tmp_path / "gateway.yaml"
    shutil.copy(EXAMPLE, config)
    assert main(["-c", str(config), "partner", "add", "fabrikam.example", "--type",
                 "federated", "--tls", "not-supported", "--sasl", "required",
                 "--dialback", "true"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "added fabrikam.example: permits TCP Dialback",
        "warning: SASL requires TLS. Allowing TLS to be optional may result in failed "
        "session negotiations.",
        "in effect: this partner will use unencrypted TCP dialback only (no TLS, no "
        "certificates); sasl=required has no effect (SASL EXTERNAL needs TLS, which "
        "tls=not-supported rules out)"]
    assert main(["-c", str(config), "check", "config"]) == 0
    out = capsys.readouterr().out
    assert ("  fabrikam.example (federated): tls=not-supported sasl=required dialback=true "
            "→ permits TCP Dialback\n    in effect: this partner will use unencrypted TCP "
            "dialback only") in out
    assert main(["-c", str(config), "partner", "show", "fabrikam.example"]) == 0
    assert "in effect            this partner will use unencrypted TCP dialback only" in \
        capsys.readouterr().out
