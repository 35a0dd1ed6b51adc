"""Writing results: JSON that is valid JSON (NumPy values made plain, NaN as null, written
atomically) and Markdown tables — one writer each for the checkpoints, runs, reports and
benchmarks."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def plain(value):
    """`value` with NumPy arrays and scalars as Python lists and numbers, and NaN/∞ as None
    (JSON has no NaN; `json.dumps` would write an invalid `NaN`)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if hasattr(value, "tolist"):  # torch tensors and the like
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value, indent: int | None = 1) -> str:
    return json.dumps(plain(value), indent=indent, allow_nan=False)


def write_json(path: str | Path, value) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_json(value))
    os.replace(tmp, path)


def format_number(value, digits: int = 3) -> str:
    """Three significant digits, thousands with separators, "—" for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """A Markdown table (also readable in a terminal) of `columns` from each row."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_number(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
