"""Shared fixtures: the real survey data folder (STARGON_DATA, default ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stargon.core import paths

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return paths.data_dir().resolve()


@pytest.fixture
def float64():
    """Torch's default dtype float64 for one test (checks in double precision), restored
    afterwards for the other modules."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def data() -> Path:
    path = data_dir()
    if not (path / "manifest.json").exists():
        raise RuntimeError(f"survey data not found at {path}: set STARGON_DATA")
    return path


@pytest.fixture(scope="session")
def manifest(data: Path) -> dict[str, dict]:
    return {entry["folder"]: entry for entry in json.loads((data / "manifest.json").read_text())}


@pytest.fixture(scope="session")
def spectra(data):
    """Five real spectra, one per kind of source: flux-calibrated library (MILES, STELIB),
    APOGEE apStar, LAMOST, Gaia RVS."""
    from stargon.surveys import read_file

    files = [
        "miles/MILES_res2.50_star_m0001V.fits",
        "apogee_dr17/apStar-dr17-2M17335483-2753043.fits",
        "lamost_dr1/SampleFits/spec-55862-B6212_sp06-003.fits",
        "gaia_rvs/KOI-001.csv",
        "stelib/STELIB_v3.2_HD002857.fits",
    ]
    return [read_file(data / f)[0] for f in files]
