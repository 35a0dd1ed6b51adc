"""Single-file formats of smaller samples: Gaia RVS (CSV), SDSS BOSS (spec-*.fits), MIKE."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from astropy import units as u

from stargon.model.physics import C_KMS, FWHM_PER_SIGMA
from stargon.surveys.common import (
    air_to_vacuum,
    clean_star_name,
    image_data,
    ivar_from_sigma,
    linear_axis,
    noise_ivar,
    segments_at,
    table_columns,
)
from stargon.surveys.registry import Probe, open_fits, register
from stargon.surveys.spectrum import Spectrum, SpectrumReadError

GAIA_RVS_RESOLVING_POWER = 11500.0
# MIKE with a 0.7" slit: R ≈ 28,000 (red) to 35,000 (blue); we record the conservative value.
MIKE_RESOLVING_POWER = 28000.0
# The BOSS blue and red cameras meet near 6,000 Å (vacuum).
BOSS_CAMERA_BOUNDARY = 6000.0


def _claims_gaia(probe: Probe) -> bool:
    return probe.kind == "csv" and {"source_id", "wavelength", "flux", "flux_error"} <= set(
        probe.columns
    )


def _claims_boss(probe: Probe) -> bool:
    return probe.kind == "fits" and "COADD" in probe.hdu_names


def _claims_mike(probe: Probe) -> bool:
    in_mike_folder = any(part.lower() == "mike" for part in probe.path.parent.parts)
    instrument = "MIKE" in str(probe.header.get("INSTRUME", "")).upper()
    one_d = probe.header.get("NAXIS") == 1 and "CRVAL1" in probe.header
    return probe.kind == "fits" and one_d and (instrument or in_mike_folder)


@register("gaia_rvs", _claims_gaia)
def read_gaia_rvs(path: Path) -> Iterator[Spectrum]:
    """Gaia DR3 mean RVS spectrum: wavelength in nm (vacuum, rest frame), normalised flux."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SpectrumReadError(path, "CSV has a header but no rows")
    try:
        wave_nm = np.array([float(r["wavelength"]) for r in rows])
        flux = np.array([_float(r["flux"]) for r in rows])
        error = np.array([_float(r["flux_error"]) for r in rows])
    except (KeyError, ValueError) as exc:
        raise SpectrumReadError(path, f"bad value in wavelength/flux/flux_error ({exc})") from exc
    yield Spectrum(
        wave=(wave_nm * u.nm).to_value(u.AA),
        flux=flux,
        ivar=ivar_from_sigma(error),
        instrument="Gaia RVS",
        resolving_power=GAIA_RVS_RESOLVING_POWER,
        frame="rest",
        normalised=True,
        source=str(path),
        star_id=f"Gaia DR3 {rows[0]['source_id']}",
    )


def _float(text: str) -> float:
    return float(text) if text.strip() else float("nan")


@register("boss", _claims_boss)
def read_boss(path: Path) -> Iterator[Spectrum]:
    """SDSS BOSS coadd: log10 vacuum wavelengths, observed frame; R per pixel from `wdisp`.

    `wdisp` is the LSF's Gaussian σ in units of the 1e-4 dex pixel, so R = 1 / (2.355 σ ln10 1e-4).
    """
    with open_fits(path) as hdul:
        cols = table_columns(hdul, "COADD", path, ("loglam", "flux", "ivar", "and_mask", "wdisp"))
        header = hdul[0].header.copy()
        z = _spall_redshift(hdul)
    wave = 10.0 ** cols["loglam"]
    sigma_loglam = np.where(cols["wdisp"] > 0, cols["wdisp"], np.nan) * 1e-4
    resolving_power = 1.0 / (FWHM_PER_SIGMA * sigma_loglam * np.log(10))
    resolving_power = np.where(np.isfinite(resolving_power), resolving_power, 2000.0)
    plate, mjd, fiber = (header.get(k, "?") for k in ("PLATEID", "MJD", "FIBERID"))
    yield Spectrum(
        wave=wave,
        flux=cols["flux"],
        ivar=np.where(cols["and_mask"] != 0, 0.0, cols["ivar"]),
        instrument="SDSS BOSS",
        resolving_power=resolving_power,
        frame="observed",
        normalised=False,
        source=str(path),
        star_id=f"SDSS {plate}-{mjd}-{fiber}",
        segments=segments_at(wave, (BOSS_CAMERA_BOUNDARY,)),
        labels={"rv": float(z * C_KMS)} if np.isfinite(z) else {},
        flux_unit="1e-17 erg / (s cm2 Angstrom)",
    )


def _spall_redshift(hdul) -> float:
    if "SPALL" not in hdul:
        return float("nan")
    data = hdul["SPALL"].data
    return float(data["Z"][0]) if "Z" in data.columns.names else float("nan")


@register("mike", _claims_mike)
def read_mike(path: Path) -> Iterator[Spectrum]:
    """Merged, normalised MIKE orders. Air wavelengths in the rest frame: Hα sits at 6562.8 Å
    and Na D2 at 5889.95 Å in every file here. No errors: ivar from DER_SNR."""
    with open_fits(path) as hdul:
        flux = image_data(hdul, 0, path, ndim=1)
        header = hdul[0].header.copy()
    wave = air_to_vacuum(linear_axis(header, flux.size, path))
    name = header.get("OBJECT") or path.stem
    yield Spectrum(
        wave=wave,
        flux=flux,
        ivar=noise_ivar(flux),
        instrument="MIKE",
        resolving_power=MIKE_RESOLVING_POWER,
        frame="rest",
        normalised=True,
        source=str(path),
        star_id=clean_star_name(str(name)),
        has_errors=False,
    )
