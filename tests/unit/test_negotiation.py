"""The negotiation rule against every row of the normative matrix.

The rows come from gateway/policy/negotiation-matrix.csv, the project's copy of the table
(tests/support/matrix.py reads it from the package and fails with the path it looked at
when it is absent)."""

from __future__ import annotations

import pytest

from gateway.policy.negotiation import AuthMethod, Support, negotiate
from tests.support.matrix import MATRIX, MatrixRow, matrix_rows

ROWS = matrix_rows()


def test_the_matrix_has_18_rows() -> None:
    # 3 tls x 3 sasl x 2 dialback; the CSV marks 13 valid and 5 invalid.
    assert MATRIX.is_file(), f"normative matrix missing: {MATRIX}"
    assert len(ROWS) == 18
    assert len({(r.tls, r.sasl, r.dialback) for r in ROWS}) == 18
    assert (sum(r.valid for r in ROWS), sum(not r.valid for r in ROWS)) == (13, 5)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.label)
def test_row(row: MatrixRow) -> None:
    outcome = negotiate(row.tls, row.sasl, row.dialback)
    assert outcome.valid == row.valid
    assert outcome.message == row.notes
    if row.valid:
        assert tuple(str(m) for m in outcome.methods) == row.methods
        assert outcome.methods_text == "; ".join(row.methods)
        assert outcome.warnings == ((row.notes,) if row.notes else ())
        assert outcome.error is None
    else:
        assert outcome.methods == ()
        assert outcome.methods_text == "none"
        assert outcome.error == row.notes
        assert outcome.warnings == ()


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.label)
def test_wire_helpers_agree_with_the_methods(row: MatrixRow) -> None:
    outcome = negotiate(row.tls, row.sasl, row.dialback)
    assert outcome.permits_dialback(over_tls=True) == ("TLS Dialback" in row.methods)
    assert outcome.permits_dialback(over_tls=False) == ("TCP Dialback" in row.methods)
    assert outcome.permits(AuthMethod.SASL_TLS) == ("SASL over TLS" in row.methods)
    # Never talk in the clear when every permitted method needs TLS.
    assert outcome.tls_mandatory == ("TCP Dialback" not in row.methods)


def test_plain_text_values_are_accepted() -> None:
    # The loader and the CLI hold the YAML text; the rule must read it as the enum.
    text = negotiate("required", "not-supported", True)  # type: ignore[arg-type]
    assert text == negotiate(Support.REQUIRED, Support.NOT_SUPPORTED, True)
    assert text.methods == (AuthMethod.TLS_DIALBACK,)
