"""The negotiation rule against every row of the normative matrix."""

from __future__ import annotations

import pytest

from gateway.policy.negotiation import negotiate
from tests.support.matrix import MatrixRow, matrix_rows

ROWS = matrix_rows()


def test_the_matrix_has_18_rows() -> None:
    # 3 tls x 3 sasl x 2 dialback; the CSV marks 13 valid and 5 invalid.
    assert len(ROWS) == 18
    assert len({(r.tls, r.sasl, r.dialback) for r in ROWS}) == 18


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.label)
def test_row(row: MatrixRow) -> None:
    outcome = negotiate(row.tls, row.sasl, row.dialback)
    assert outcome.valid == row.valid
    if row.valid:
        assert tuple(str(m) for m in outcome.methods) == row.methods
        assert outcome.warnings == ((row.notes,) if row.notes else ())
        assert outcome.error is None
    else:
        assert outcome.methods == ()
        assert outcome.error == row.notes
