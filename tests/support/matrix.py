"""Loads the normative negotiation matrix, the project's copy shipped in the package.

``gateway/policy/negotiation-matrix.csv`` (provenance: ``negotiation-matrix.md`` beside it)
is read through :mod:`importlib.resources`, so the tests check the very file the wheel
carries, from a checkout or from an installed package alike."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from gateway.policy.negotiation import Support

MATRIX: Traversable = files("gateway.policy") / "negotiation-matrix.csv"


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
        raise FileNotFoundError(f"the normative matrix is missing from the package: {MATRIX}")
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


def expected_method(a: MatrixRow, b: MatrixRow, trusted: bool) -> str | None:
    """The method A→B should end up with, from the documented rules alone (None = must fail).

    TLS is used when neither side has it not-supported; then SASL EXTERNAL when both permit
    it and the certificates verify, else TLS dialback when both permit it; without TLS only
    TCP dialback can work."""
    both = set(a.methods) & set(b.methods)
    if Support.NOT_SUPPORTED not in (a.tls, b.tls):
        if "SASL over TLS" in both and trusted:
            return "SASL over TLS"
        return "TLS Dialback" if "TLS Dialback" in both else None
    return "TCP Dialback" if "TCP Dialback" in both else None
