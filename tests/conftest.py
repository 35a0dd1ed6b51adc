"""Shared fixtures: the real survey data folder (STARGON_DATA, default ../shared/data)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("STARGON_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def data() -> Path:
    path = data_dir()
    if not (path / "manifest.json").exists():
        raise RuntimeError(f"survey data not found at {path}: set STARGON_DATA")
    return path


@pytest.fixture(scope="session")
def manifest(data: Path) -> dict[str, dict]:
    return {entry["folder"]: entry for entry in json.loads((data / "manifest.json").read_text())}
