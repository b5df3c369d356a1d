"""docs/configuration.md's matrix table must say what the normative CSV says."""

from __future__ import annotations

from pathlib import Path

from tests.support.matrix import matrix_rows

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_table_matches_the_csv() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- matrix:begin -->")[1].split("<!-- matrix:end -->")[0]
    lines = [line for line in table.strip().splitlines()[2:]]
    assert len(lines) == len(matrix_rows()) == 18
    for line, row in zip(lines, matrix_rows(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [str(row.tls), str(row.sasl), str(row.dialback).lower(),
                             "yes" if row.valid else "no"]
        assert cells[4] == ("; ".join(row.methods) or "—")
        assert cells[5] == row.notes
