"""A spectroscopist's own files: the same real spectrum written as a plain CSV (with and without
errors), an astropy Table FITS with units, a 1-D FITS image with a linear air-wavelength WCS and
a specutils-written FITS comes back as the same `Spectrum`, and `stargon fit` fits it."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import Table

from stargon.core.interop import UserSettings
from stargon.core.physics import vacuum_to_air
from stargon.core.spectrum import Spectrum, SpectrumReadError
from stargon.surveys import read_file

LAMOST_FILE = "lamost_dr8/20220313_CCF_test_grouped_fits"


@pytest.fixture(scope="module")
def lamost(data) -> Spectrum:
    """A real LAMOST DR8 spectrum (vacuum, observed frame, R = 1,800), as its reader gives it."""
    first = sorted((data / LAMOST_FILE).rglob("*.fits.gz"))[0]
    return read_file(first)[0]


@pytest.fixture(scope="module")
def miles(spectra) -> Spectrum:
    return spectra[0]


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
    return path


def sigma(spectrum: Spectrum) -> np.ndarray:
    return np.where(spectrum.valid, spectrum.uncertainty, np.nan)


def test_a_plain_csv_with_errors_is_the_same_spectrum(lamost, tmp_path):
    path = write_csv(tmp_path / "star.csv", {"Wavelength": lamost.wave, "FLUX": lamost.flux,
                                              "error": sigma(lamost)})  # fmt: skip
    mine = read_file(path, user=UserSettings(resolving_power=1800))[0]
    np.testing.assert_allclose(mine.wave, lamost.wave, rtol=1e-12)
    np.testing.assert_allclose(mine.flux, lamost.flux, rtol=1e-12)
    np.testing.assert_allclose(mine.ivar, lamost.ivar, rtol=1e-9)
    assert mine.has_errors and mine.resolving_power == 1800 and mine.frame == "observed"
    assert not mine.normalised  # LAMOST counts are not ~1


def test_a_csv_without_errors_gets_a_flagged_noise_estimate(lamost, tmp_path):
    path = write_csv(tmp_path / "star.csv", {"wave": lamost.wave, "flux": lamost.flux})
    mine = read_file(path, user=UserSettings(resolving_power=1800))[0]
    assert not mine.has_errors
    estimated = 1 / np.sqrt(mine.ivar[mine.valid][0])
    published = np.median(sigma(lamost)[lamost.valid])
    assert 0.3 < estimated / published < 3  # DER_SNR is an estimate, of the right size


def test_a_table_fits_with_units_and_a_header_resolving_power(lamost, tmp_path):
    table = Table({"WAVELENGTH": (lamost.wave / 10) * u.nm, "FLUX": lamost.flux,
                   "IVAR": lamost.ivar})  # fmt: skip
    hdu = fits.table_to_hdu(table)
    primary = fits.PrimaryHDU()
    primary.header["SPEC_RES"] = (1800.0, "resolving power (ESO)")
    path = tmp_path / "star.fits"
    fits.HDUList([primary, hdu]).writeto(path)
    mine = read_file(path)[0]  # no settings: R from the header
    np.testing.assert_allclose(mine.wave, lamost.wave, rtol=1e-12)
    np.testing.assert_allclose(mine.ivar, lamost.ivar, rtol=1e-9)
    assert mine.resolving_power == 1800


def test_a_1d_image_with_a_linear_air_wcs(miles, tmp_path):
    """MILES pixels are linear in air wavelength: written as CTYPE1 = AWAV with CRVAL1/CDELT1,
    they come back in vacuum, as MILES's own reader gives them."""
    air = vacuum_to_air(miles.wave)
    hdu = fits.PrimaryHDU(miles.flux.astype(np.float32))
    hdu.header.update(CRVAL1=air[0], CDELT1=np.mean(np.diff(air)), CRPIX1=1.0,
                      CUNIT1="Angstrom", CTYPE1="AWAV")  # fmt: skip
    path = tmp_path / "library_star.fits"
    hdu.writeto(path)
    mine = read_file(path, user=UserSettings(resolving_power=2000, frame="rest"))[0]
    np.testing.assert_allclose(mine.wave, miles.wave, atol=2e-3)  # float32-free: CRVAL exact
    assert mine.frame == "rest" and not mine.has_errors


def test_specutils_both_ways(lamost, tmp_path):
    """`to_specutils` → specutils' own FITS writer → `read_file`, and `from_specutils` directly:
    the record survives, resolving power and frame included."""
    theirs = lamost.to_specutils()
    assert theirs.spectral_axis.unit == u.AA and theirs.meta["resolving_power"] == 1800
    back = Spectrum.from_specutils(theirs)
    np.testing.assert_allclose(back.flux, lamost.flux)
    np.testing.assert_allclose(back.ivar, lamost.ivar, rtol=1e-12)
    assert back.frame == lamost.frame and back.resolving_power == 1800
    path = tmp_path / "written_by_specutils.fits"
    theirs.write(path, format="tabular-fits")
    mine = read_file(path, user=UserSettings(resolving_power=1800))[0]
    np.testing.assert_allclose(mine.wave, lamost.wave, rtol=1e-12)
    np.testing.assert_allclose(mine.ivar, lamost.ivar, rtol=1e-6)


def test_what_cannot_be_read_says_what_was_found(lamost, tmp_path):
    path = write_csv(tmp_path / "odd.csv", {"x": lamost.wave, "y": lamost.flux})
    with pytest.raises(SpectrumReadError, match=r"found columns x, y; no wavelength or flux"):
        read_file(path, user=UserSettings(resolving_power=1800))
    path = write_csv(tmp_path / "star.csv", {"wavelength": lamost.wave, "flux": lamost.flux})
    with pytest.raises(SpectrumReadError, match=r"no resolving power.*--resolving-power"):
        read_file(path)
    smooth = 1 - 0.5 * np.exp(-0.5 * ((lamost.wave - 6564.6) / 2.0) ** 2)  # no noise, no errors
    path = write_csv(tmp_path / "model.csv", {"wavelength": lamost.wave, "flux": smooth})
    with pytest.raises(SpectrumReadError, match="DER_SNR finds no noise"):
        read_file(path, user=UserSettings(resolving_power=1800))


def test_a_multi_extension_fits_that_no_reader_knows_is_named_by_its_extensions(tmp_path):
    """A coadd-like file (a target table, then arms as images): the message lists its
    extensions, not the first table's columns."""
    fibermap = Table({"TARGETID": np.arange(3), "PETAL_LOC": np.zeros(3, dtype=int)})
    hdus = [fits.PrimaryHDU(), fits.table_to_hdu(fibermap),
            fits.ImageHDU(np.linspace(3600, 5900, 50), name="B_WAVELENGTH"),
            fits.ImageHDU(np.ones((3, 50)), name="B_FLUX")]  # fmt: skip
    hdus[1].name = "FIBERMAP"
    path = tmp_path / "coadd.fits"
    fits.HDUList(hdus).writeto(path)
    with pytest.raises(SpectrumReadError) as caught:
        read_file(path, user=UserSettings(resolving_power=3000))
    assert caught.value.problem.startswith(
        "no reader knows its extensions (0 PRIMARY: empty; 1 FIBERMAP: table of 2 columns; "
        "2 B_WAVELENGTH: image 50; 3 B_FLUX: image 3 × 50)"
    )


def test_stargon_fit_fits_a_plain_csv_like_the_survey_file(lamost, tmp_path):
    """The CLI on the user's CSV and on the LAMOST file itself: the same velocity (the CSV has
    one continuum segment, LAMOST's reader two arms) and a comparable χ²."""
    path = write_csv(tmp_path / "star.csv", {"wavelength": lamost.wave, "flux": lamost.flux,
                                             "error": sigma(lamost)})  # fmt: skip
    out = tmp_path / "fits.csv"
    command = [sys.executable, "-m", "stargon", "fit", "--resolving-power", "1800", "--out",
               str(out), str(path), lamost.source]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["instrument"] for r in rows] == ["user spectrum", "LAMOST LRS"]
    mine, theirs = rows
    assert abs(float(mine["rv_kms"]) - float(theirs["rv_kms"])) < 3 * float(theirs["rv_err_kms"])
    # One continuum polynomial across both arms fits no better than one per arm, and not much
    # worse: 1.25× with the sixth release.
    assert float(theirs["chi2_dof"]) <= float(mine["chi2_dof"]) < 1.35 * float(theirs["chi2_dof"])
