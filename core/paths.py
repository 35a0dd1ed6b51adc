"""Where the survey data are, decided in one place for the CLI, the tests and the benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]  # a source checkout: core/ is a top folder


def data_dir() -> Path:
    """$STARGON_DATA; else `../shared/data` from the working directory; else beside the source
    checkout (so tests and benchmarks find it from any folder)."""
    if os.environ.get("STARGON_DATA"):
        return Path(os.environ["STARGON_DATA"])
    for base in (Path.cwd(), REPOSITORY):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path("../shared/data")
