"""Loads ../shared/spec/negotiation-matrix.csv, the normative table (never copied)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from gateway.policy.negotiation import Support

MATRIX = Path(__file__).resolve().parents[3] / "shared" / "spec" / "negotiation-matrix.csv"


@dataclass(frozen=True)
class MatrixRow:
    tls: Support
    sasl: Support
    dialback: bool
    valid: bool
    methods: tuple[str, ...]
    notes: str

    @property
    def label(self) -> str:
        return f"tls={self.tls},sasl={self.sasl},dialback={str(self.dialback).lower()}"


def _support(text: str) -> Support:
    text = text.strip().lower().replace(" ", "").replace("-", "")
    return Support.NOT_SUPPORTED if text == "notsupported" else Support(text)


def matrix_rows() -> list[MatrixRow]:
    if not MATRIX.is_file():
        raise FileNotFoundError(f"the normative matrix is missing: {MATRIX} (clone ../shared)")
    with MATRIX.open(newline="", encoding="utf-8") as handle:
        return [
            MatrixRow(
                _support(row["tls"]), _support(row["sasl"]),
                row["dialback"].strip().lower() == "true", row["valid"].strip() == "yes",
                tuple(m.strip() for m in row["expected_methods"].split(";") if m.strip()),
                row["notes"].strip(),
            )
            for row in csv.DictReader(handle)
        ]
