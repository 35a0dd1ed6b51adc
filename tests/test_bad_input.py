"""Real files, cut or corrupted in a temporary folder: each gives one clear error naming the
file and the problem, and a batch skips it and loses nothing else."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from stargon.surveys import SpectrumReadError, read_file, scan

LAMOST_DR1 = "lamost_dr1/SampleFits/spec-55862-B6212_sp06-003.fits"
LAMOST_DR8 = "lamost_dr8/20220313_CCF_test_grouped_fits/spec-55859-F5902_sp03-232.fits.gz"
GALAH_ARM = "galah_workshop/sample_data/210115/spectra/com/2101150001010011.fits"
BOSS = "boss/spec-3586-55181-0500.fits"
MILES = "miles/MILES_res2.50_star_m0001V.fits"


def edited_lamost(data: Path, out: Path, edit) -> Path:
    with fits.open(data / LAMOST_DR1) as hdul:
        rows = hdul[0].data.astype(np.float32)
        edit(rows)
        fits.PrimaryHDU(rows, header=hdul[0].header).writeto(out)
    return out


def truncated(data: Path, out: Path) -> Path:
    raw = (data / LAMOST_DR1).read_bytes()
    out.write_bytes(raw[: len(raw) // 2])
    return out


def without_normalized_hdu(data: Path, out: Path) -> Path:
    with fits.open(data / GALAH_ARM) as hdul:
        fits.HDUList([h.copy() for h in hdul if h.name.upper() != "NORMALIZED"]).writeto(out)
    return out


def boss_without_ivar(data: Path, out: Path) -> Path:
    with fits.open(data / BOSS) as hdul:
        coadd = hdul["COADD"]
        columns = [c for c in coadd.columns if c.name != "ivar"]
        table = fits.BinTableHDU.from_columns(columns, header=coadd.header, name="COADD")
        fits.HDUList([hdul[0].copy(), table]).writeto(out)
    return out


def shuffled_dr8_wavelengths(data: Path, out: Path) -> Path:
    with fits.open(data / LAMOST_DR8) as hdul:
        rows = hdul[0].data.copy()
        rows[2, [100, 101]] = rows[2, [101, 100]]
        fits.PrimaryHDU(rows, header=hdul[0].header).writeto(out)
    return out


def unknown_instrument(data: Path, out: Path) -> Path:
    fits.PrimaryHDU(np.linspace(1.0, 2.0, 50)).writeto(out)
    return out


def broken_npz(data: Path, out: Path) -> Path:
    out.write_bytes(b"PK\x03\x04 not really a zip")
    return out


def nan_flux(rows):
    rows[0] = np.nan


def negative_ivar(rows):
    rows[1, 100:110] = -1.0


CASES = {
    "truncated.fits": (truncated, "truncated or corrupt"),
    "galah_no_norm1.fits": (without_normalized_hdu, "missing HDU 'normalized'"),
    "boss_no_ivar.fits": (boss_without_ivar, "lacks columns ['ivar']"),
    "all_nan.fits": (lambda d, o: edited_lamost(d, o, nan_flux), "no valid pixels"),
    "neg_ivar.fits": (lambda d, o: edited_lamost(d, o, negative_ivar), "negative inverse variance"),
    "shuffled.fits": (shuffled_dr8_wavelengths, "not strictly increasing (pixel 100"),
    "unknown.fits": (unknown_instrument, "no wavelength axis"),
    "broken.npz": (broken_npz, "not a readable npz archive"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_names_itself_and_the_problem(data, tmp_path, name):
    make, message = CASES[name]
    path = make(data, tmp_path / name)
    with pytest.raises(SpectrumReadError) as info:
        read_file(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpectrumReadError, match="file does not exist") as info:
        read_file(tmp_path / "nowhere.fits")
    assert "nowhere.fits" in str(info.value)


def test_file_of_the_wrong_survey(data):
    with pytest.raises(SpectrumReadError, match="not a lamost file") as info:
        read_file(data / MILES, survey="lamost")
    assert "MILES_res2.50_star_m0001V.fits" in str(info.value)


@pytest.fixture
def mixed_folder(data, tmp_path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for good in (LAMOST_DR1, MILES, GALAH_ARM):
        shutil.copy(data / good, folder / Path(good).name)
    for name, (make, _) in CASES.items():
        make(data, folder / name)
    return folder


def test_batch_skips_bad_files_and_keeps_every_good_one(mixed_folder):
    outcomes = list(scan(mixed_folder))
    failed = {o.path.name: o.error for o in outcomes if o.error}
    read = [s for o in outcomes for s in o.spectra]
    assert set(failed) == set(CASES)
    assert len(read) == 3
    assert {s.instrument for s in read} == {"LAMOST LRS", "MILES", "GALAH HERMES"}


def test_data_check_cli_reports_failures_as_json(mixed_folder):
    result = subprocess.run(
        [sys.executable, "-m", "stargon", "data", "check", str(mixed_folder), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["totals"] == {"files": 3 + len(CASES), "spectra": 3, "failed": len(CASES)}
    reasons = {Path(f["file"]).name: f["reason"] for f in report["sources"][0]["failures"]}
    assert "negative inverse variance" in reasons["neg_ivar.fits"]
