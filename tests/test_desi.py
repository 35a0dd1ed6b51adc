"""DESI coadd and spectra files, read from the two real cut-down DESI files that specutils
ships with its own tests, and checked against specutils' DESI reader on the same pixels."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import specutils
from astropy.io import fits
from specutils import SpectrumList

from stargon.surveys import read_file

SHIPPED = Path(specutils.__file__).parent / "io/default_loaders/tests/desi_test_data"
COADD = SHIPPED / "coadd-sv3-dark-26065.fits"


def test_a_coadd_gives_one_record_per_lit_target_fibre_with_three_arms():
    spectra = read_file(COADD)
    fibermap = fits.getdata(COADD, "FIBERMAP")
    targets = [int(t) for t, kind in zip(fibermap["TARGETID"], fibermap["OBJTYPE"], strict=True)
               if kind == "TGT"]  # fmt: skip
    assert [s.star_id for s in spectra] == [f"DESI {t}" for t in targets]  # no sky fibre
    for spectrum in spectra:
        assert spectrum.instrument == "DESI" and spectrum.frame == "observed"
        assert len(spectrum.segments) == 3 and np.all(np.diff(spectrum.wave) > 0)
        joins = [spectrum.wave[start] for start, _ in spectrum.segments[1:]]
        assert joins == pytest.approx([5780.0, 7570.0], abs=1.0)  # overlap middles, ±1 pixel
        r = np.asarray(spectrum.resolving_power)
        medians = [np.median(r[a:b]) for a, b in spectrum.segments]
        assert 2000 < medians[0] < medians[1] < medians[2] < 6000  # R rises from B to Z
        assert "sv3_mws_target" in spectrum.labels


def test_flux_and_ivar_are_those_specutils_reads_for_the_same_fibre():
    ours = read_file(COADD)
    arms = {s.meta["band"]: s for s in SpectrumList.read(COADD, format="DESI coadd")}
    row = int(ours[0].source.rsplit("[", 1)[1].rstrip("]"))
    for (start, stop), band in zip(ours[0].segments, ("b", "r", "z"), strict=True):
        arm = arms[band]
        wave = arm.spectral_axis.to_value("Angstrom")
        first = int(np.searchsorted(wave, ours[0].wave[start]))
        pixels = slice(first, first + stop - start)
        assert np.allclose(ours[0].wave[start:stop], wave[pixels])
        assert np.allclose(ours[0].flux[start:stop], arm.flux.value[row, pixels])
        ivar = arm.uncertainty.array[row, pixels]
        good = ours[0].ivar[start:stop] > 0
        assert np.allclose(ours[0].ivar[start:stop][good], ivar[good])


def test_resolving_power_is_the_resolution_matrix_kernels_width():
    """σ of row j's kernel, rebuilt from the dense resolution matrix (DESI's diagonal storage,
    offsets ndiag//2 − d), gives R = λ / (2.355 σ Δλ) at that pixel."""
    from scipy.sparse import dia_matrix

    (spectrum, *_) = read_file(COADD)
    row = int(spectrum.source.rsplit("[", 1)[1].rstrip("]"))
    data = fits.getdata(COADD, "B_RESOLUTION")[row].astype(float)
    wave = fits.getdata(COADD, "B_WAVELENGTH")
    offsets = data.shape[0] // 2 - np.arange(data.shape[0])
    matrix = dia_matrix((data, offsets), shape=(wave.size, wave.size)).toarray()
    j = 1200
    column = matrix[:, j]  # what a line at pixel j becomes
    k = np.arange(wave.size) - j
    mean = (column * k).sum() / column.sum()
    sigma = np.sqrt((column * (k - mean) ** 2).sum() / column.sum())
    expected = wave[j] / (2.3548 * sigma * (wave[j + 1] - wave[j]))
    assert np.asarray(spectrum.resolving_power)[j] == pytest.approx(expected, rel=1e-3)


def test_a_spectra_file_gives_each_exposure_of_a_target(tmp_path):
    path = SHIPPED / "spectra-5-169-thru20210419.fits"
    spectra = read_file(path)
    assert spectra and len({s.source for s in spectra}) == len(spectra)
    out = tmp_path / "fits.csv"  # and the embedded model, which never saw DESI, fits them
    result = subprocess.run([sys.executable, "-m", "stargon", "fit", str(path), "--out", str(out)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [r["star_id"] for r in rows] == [s.star_id for s in spectra]
    assert all(r["instrument"] == "DESI" and np.isfinite(float(r["chi2_dof"])) for r in rows)
