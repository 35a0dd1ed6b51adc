"""What this project made itself: the embedded default model and the line list."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LINE_LIST = Path(__file__).with_name("lines.csv")


@dataclass(frozen=True)
class Line:
    name: str
    species: str
    wavelength: float  # vacuum Å
    kind: str  # "line" or "band"


@cache
def line_list() -> tuple[Line, ...]:
    """The strong stellar lines of assets/lines.csv, sorted by wavelength."""
    with open(LINE_LIST, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        lines = [
            Line(row["name"], row["species"], float(row["wavelength_vacuum"]), row["kind"])
            for row in rows
        ]
    return tuple(sorted(lines, key=lambda line: line.wavelength))
