"""Every source in the shared data folder, read by its reader, against documented facts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stargon.core.physics import vacuum_to_air
from stargon.surveys import read_file
from stargon.surveys.check import check_folder
from stargon.train.emulator import LABEL_NAMES, PayneEmulator


@pytest.fixture(scope="module")
def summaries(data):
    return {s.source: s for s in check_folder(data)}


def to_air(wave: float) -> float:
    return vacuum_to_air(torch.tensor([wave], dtype=torch.float64)).item()


def test_every_source_reads_with_manifest_counts_and_no_failure(summaries, manifest):
    for folder, entry in manifest.items():
        summary = summaries[folder]
        assert summary.failures == [], folder
        assert summary.spectra == entry["n_spectra"], folder


def test_folder_wavelength_ranges_match_the_manifest(summaries, manifest):
    """The record is vacuum; air surveys are compared after converting back to air."""
    for folder, entry in manifest.items():
        summary = summaries[folder]
        lo, hi = summary.wave_min, summary.wave_max
        # MIKE's manifest says "not stated"; its lines sit at air rest wavelengths (see README).
        if entry["air_or_vacuum"].startswith("air") or folder == "mike":
            lo, hi = to_air(lo), to_air(hi)
        assert lo == pytest.approx(entry["wavelength_min"], abs=2.5), folder
        assert hi <= entry["wavelength_max"] + 2.5, folder


def test_lamost_dr1_first_spectrum(data):
    (spec,) = read_file(data / "lamost_dr1/SampleFits/spec-55862-B6212_sp06-003.fits")
    assert spec.star_id == "LAMOST J063715.90+271356.5"
    assert spec.wave[0] == pytest.approx(10**3.5682, rel=1e-9)  # log10-linear, vacuum
    assert spec.n_pixels == 3904 and spec.frame == "observed" and not spec.normalised
    assert spec.labels["teff"] == pytest.approx(5456.41)
    assert spec.labels["rv"] == pytest.approx(-21.4)
    assert len(spec.segments) == 2  # blue and red arms


def test_lamost_dr8_repeat_observations_share_a_star_id(data):
    folder = data / "lamost_dr8/20220313_CCF_test_grouped_fits"
    ids = {
        read_file(folder / f"{name}.fits.gz")[0].star_id
        for name in (
            "spec-55859-F5902_sp03-232",
            "spec-55859-F5902_sp05-172",
        )
    }
    assert len(ids) == 2  # groups 1 and 2 are different stars
    spectra = [read_file(p)[0] for p in sorted(folder.glob("*.fits.gz"))]
    by_group: dict[float, set[str]] = {}
    for spec in spectra:
        by_group.setdefault(spec.labels["group_id"], set()).add(spec.star_id)
        assert spec.wave[0] > 3690 and spec.wave[-1] < 9110
    assert all(len(ids) == 1 for ids in by_group.values())
    assert len(by_group) == 99


def test_miles_labels_names_and_rest_frame_halpha(data):
    (spec,) = read_file(data / "miles/MILES_res2.50_star_m0001V.fits")
    assert spec.star_id == "HD224930"
    assert spec.labels == {"teff": 5305.0, "logg": 4.49, "fe_h": -0.75}
    assert to_air(spec.wave[0]) == pytest.approx(3540.5, abs=1e-6)  # CRVAL1 at CRPIX1 = 1
    assert np.median(spec.resolving_power) == pytest.approx(np.median(spec.wave) / 2.51)
    assert not spec.has_errors and spec.frame == "rest"
    window = (spec.wave > 6550) & (spec.wave < 6580)
    assert spec.wave[window][np.argmin(spec.flux[window])] == pytest.approx(6564.61, abs=1.0)


def test_stelib_and_miles_share_a_hundred_stars(data):
    stelib = {read_file(p)[0].star_id for p in sorted(data.glob("stelib/STELIB_*.fits"))}
    miles = {read_file(p)[0].star_id for p in sorted(data.glob("miles/MILES_*.fits"))}
    assert "HD002857" in stelib & miles
    assert len(stelib & miles) >= 100


def test_stelib_partial_coverage_is_masked_not_failed(data):
    (spec,) = read_file(data / "stelib/STELIB_v3.2_HD038247.fits")
    assert 0 < spec.valid.sum() < spec.n_pixels
    assert np.all(spec.flux[spec.valid] > 0)


def test_galah_arm_labels_from_the_release_table(data):
    path = data / "galah_workshop/sample_data/210115/spectra/com/2101150001010011.fits"
    (spec,) = read_file(path)
    assert spec.star_id == "210115000101001"
    assert spec.normalised and spec.frame == "observed"
    assert spec.labels["teff"] == pytest.approx(4688.43, abs=0.01)
    assert to_air(spec.wave[0]) == pytest.approx(4714.0615, abs=1e-3)
    # per-pixel R from the resolution profile (FWHM 0.229 Å in the blue arm)
    assert spec.resolving_power[0] == pytest.approx(spec.wave[0] / 0.22937, rel=1e-4)


def test_galah_dr4_has_four_ccd_segments_in_the_rest_frame(data):
    path = next((data / "galah_dr4/galah_data").glob("150411003101372/*.fits"))
    (spec,) = read_file(path)
    assert spec.star_id == "150411003101372" and spec.frame == "rest"
    assert len(spec.segments) == 4
    assert to_air(spec.wave[0]) == pytest.approx(4673.4278, abs=1e-3)


def test_apogee_apstar_and_apvisit(data):
    (star,) = read_file(data / "apogee_dr17/apStar-dr17-2M17335483-2753043.fits")
    assert star.star_id == "2M17335483-2753043" and star.frame == "rest"
    assert star.wave[0] == pytest.approx(10**4.179, rel=1e-12)
    assert star.n_pixels == 8575 and len(star.segments) == 3
    assert star.labels["rv"] == pytest.approx(15.6814, abs=1e-4)
    (visit,) = read_file(data / "apogee_dr17/apVisit-r13-5095-55844-128.fits")
    assert visit.n_pixels == 3 * 4096 and visit.frame == "observed"
    assert np.all(np.diff(visit.wave) > 0) and len(visit.segments) == 3
    assert visit.labels["rv"] == pytest.approx(-33.1228, abs=1e-4)


def test_payne_visit_file_gives_three_rest_frame_spectra(data):
    path = next(data.glob("apogee_payne/spectra/visit/*.npz"))
    visits = read_file(path)
    assert len(visits) == 3
    assert [v.labels["rv"] for v in visits] == pytest.approx([17.6236, -47.4247, -42.6253])
    assert all(v.star_id == "2M06133561+2433362" and v.normalised for v in visits)


def test_gaia_rvs_mike_and_boss(data):
    (rvs,) = read_file(data / "gaia_rvs/KOI-001.csv")
    assert rvs.wave[0] == pytest.approx(8460.0) and rvs.star_id == "Gaia DR3 2131314401800665344"
    (mike,) = read_file(data / "mike/hd140283.fits")
    assert mike.star_id == "HD140283" and not mike.has_errors
    window = (mike.wave > 5885) & (mike.wave < 5900)
    na_d2 = mike.wave[window][np.argmin(mike.flux[window])]
    assert na_d2 == pytest.approx(5891.58, abs=0.15)  # air rest frame converted to vacuum
    (boss,) = read_file(data / "boss/spec-3586-55181-0500.fits")
    assert boss.frame == "observed" and 1500 < np.median(boss.resolving_power) < 2500
    assert boss.wave[0] == pytest.approx(3561.2, abs=0.1)


def test_payne_emulator_makes_synthetic_labelled_spectra(data):
    emulator = PayneEmulator(data / "apogee_payne/neural_nets/NN_normalized_spectra.npz")
    rich, poor, hot = (
        [5000.0, 4.5, 0.3, 0.0, 5.0],
        [5000.0, 4.5, -0.7, 0.0, 5.0],
        [6500.0, 4.5, 0.3, 0.0, 5.0],
    )
    labels = torch.tensor([rich, poor, hot], dtype=torch.float64)
    depth = (1 - emulator.flux(labels)).mean(-1)
    assert depth[0] > depth[1]  # metal-rich lines are deeper
    assert depth[0] > depth[2]  # cool-star lines are deeper
    spectra = emulator.spectra(labels, snr=100.0, seed=1)
    assert all(s.synthetic and "synthetic" in s.instrument for s in spectra)
    assert spectra[0].labels == pytest.approx(dict(zip(LABEL_NAMES, rich, strict=True)))
    clean = emulator.flux(labels[:1]).numpy()[0]
    pulls = (spectra[0].flux - clean) * np.sqrt(spectra[0].ivar)
    assert np.std(pulls) == pytest.approx(1.0, abs=0.03)
    drawn = emulator.sample_labels(500, torch.Generator().manual_seed(0))
    assert torch.all(drawn >= emulator.x_min) and torch.all(drawn <= emulator.x_max)


def test_reading_a_folder_is_lazy(data, tmp_path):
    """iter_spectra reads a file only when the stream reaches it: after the first spectrum is
    taken, the second file is replaced by a broken one, and the stream must see the break (an
    eager reader would already hold the good spectrum)."""
    from stargon.surveys import iter_spectra

    originals = sorted((data / "miles").glob("MILES*.fits"))[:2]
    for original in originals:
        (tmp_path / original.name).write_bytes(original.read_bytes())
    errors: list[str] = []
    stream = iter_spectra(tmp_path, on_error=lambda path, error: errors.append(path.name))
    first = next(stream)
    assert Path(first.source).name == originals[0].name
    (tmp_path / originals[1].name).write_bytes(b"SIMPLE  = not a FITS file any more")
    assert list(stream) == []
    assert errors == [originals[1].name]


COUNT_OPENS = """
import sys
from astropy.io import fits
from stargon.surveys import read_file
from stargon.surveys.registry import scan
path = sys.argv[1]
opens = []
sys.addaudithook(lambda event, args: opens.append(args[0]) if event == "open" else None)
with fits.open(path):
    pass
per_open = opens.count(path)  # astropy opens a .gz file twice to open it once
spectra = read_file(path)
by_read = opens.count(path) - per_open
outcome = next(scan(path))
by_scan = opens.count(path) - per_open - by_read
print(by_read // per_open, by_scan // per_open, len(spectra), len(outcome.spectra))
"""


def test_a_survey_file_is_opened_once_for_its_probe_and_its_read(data):
    """The probe's open FITS file is lent to the reader: a gzipped LAMOST DR8 file is opened
    (and decompressed) once by `read_file` and once by `scan`, not twice each (Python's audit
    events count the opens)."""
    import subprocess
    import sys

    path = next((data / "lamost_dr8/20220313_CCF_test_grouped_fits").iterdir())
    assert path.name.endswith(".fits.gz")
    run = subprocess.run(
        [sys.executable, "-c", COUNT_OPENS, str(path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "1", "1", "1"]
