"""APOGEE (H band, vacuum, R ≈ 22,500): SDSS apStar / apVisit FITS and The Payne's npz files."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stargon.core.spectrum import Spectrum, SpectrumReadError, ivar_from_sigma
from stargon.surveys.common import (
    files_beside,
    image_data,
)
from stargon.surveys.instruments import APOGEE
from stargon.surveys.registry import Probe, open_fits, register

# APOGEE_PIXMASK bits that make a pixel unusable: BADPIX, CRPIX, SATPIX, UNFIXABLE, BADDARK,
# BADFLAT, BADERR, NOSKY, SIG_SKYLINE, NOT_ENOUGH_PSF (the ASPCAP bad-pixel mask).
BAD_PIXEL_BITS = sum(1 << b for b in (0, 1, 2, 3, 4, 5, 6, 7, 12, 14))
# The Payne marks pixels it could not use with errors ≫ 1 in normalised flux.
PAYNE_BAD_ERROR = 1.0


def _claims_apstar(probe: Probe) -> bool:
    h = probe.header
    return probe.kind == "fits" and "NWAVE" in h and "NVISITS" in h and "OBJID" in h


def _claims_apvisit(probe: Probe) -> bool:
    telescope = str(probe.header.get("TELESCOP", "")).lower()
    return probe.kind == "fits" and telescope.endswith(("25m", "1m")) and "OBJID" in probe.header


def _claims_payne(probe: Probe) -> bool:
    keys = set(probe.columns)
    return probe.kind == "npz" and (
        {"spectrum", "spec_err"} <= keys or {"spectra", "spec_errs"} <= keys
    )


@register("apogee_apstar", _claims_apstar)
def read_apstar(path: Path) -> Iterator[Spectrum]:
    """The first (global-weighted) combined spectrum of an apStar file, in the rest frame."""
    with open_fits(path) as hdul:
        header = hdul[0].header.copy()
        flux, error, mask = (_first_row(_image_any(hdul, k, path)) for k in (1, 2, 3))
    n = flux.size
    wave = 10.0 ** (header["CRVAL1"] + header["CDELT1"] * (np.arange(n) + 1 - header["CRPIX1"]))
    bad = (mask.astype(np.int64) & BAD_PIXEL_BITS) != 0
    yield Spectrum(
        wave=wave,
        flux=flux,
        ivar=np.where(bad | (flux <= 0), 0.0, ivar_from_sigma(error)),
        instrument=APOGEE.name,
        resolving_power=APOGEE.resolving_power,
        frame="rest",
        normalised=False,
        source=f"{path}[1]",
        star_id=str(header["OBJID"]).strip(),
        segments=APOGEE.segments(wave),
        labels=_finite({"rv": header.get("VHELIO"), "snr": header.get("SNR")}),
        flux_unit="1e-17 erg / (s cm2 Angstrom)",
    )


@register("apogee_apvisit", _claims_apvisit)
def read_apvisit(path: Path) -> Iterator[Spectrum]:
    """One visit, three detectors joined in increasing wavelength, observed frame."""
    with open_fits(path) as hdul:
        header = hdul[0].header.copy()
        flux, error, mask, wave = (image_data(hdul, k, path, ndim=2) for k in (1, 2, 3, 4))
    order = np.argsort(wave.ravel())
    flux, error, mask, wave = (a.ravel()[order] for a in (flux, error, mask, wave))
    bad = (mask.astype(np.int64) & BAD_PIXEL_BITS) != 0
    labels = {"rv": header.get("VHELIO"), "rv_topocentric": header.get("VRAD")}
    yield Spectrum(
        wave=wave,
        flux=flux,
        ivar=np.where(bad | (flux <= 0), 0.0, ivar_from_sigma(error)),
        instrument=APOGEE.name,
        resolving_power=APOGEE.resolving_power,
        frame="observed",
        normalised=False,
        source=str(path),
        star_id=str(header["OBJID"]).strip(),
        segments=APOGEE.segments(wave),
        labels=_finite(labels | {"snr": header.get("SNR")}),
        flux_unit="1e-17 erg / (s cm2 Angstrom)",
    )


def _image_any(hdul, key: int, path: Path) -> np.ndarray:
    """apStar images are 2-D (combined + visits) or 1-D for a single visit."""
    data = hdul[key].data if key < len(hdul) else None
    if data is None:
        raise SpectrumReadError(path, f"missing HDU {key} (flux, error and mask are HDUs 1–3)")
    return image_data(hdul, key, path, ndim=data.ndim)


def _first_row(image: np.ndarray) -> np.ndarray:
    return image[0] if image.ndim == 2 else image


def _finite(values: dict) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, int | float) and np.isfinite(value):
            out[key] = float(value)
    return out


@register("apogee_payne", _claims_payne)
def read_payne(path: Path) -> Iterator[Spectrum]:
    """Continuum-normalised APOGEE spectra on The Payne's 7,214-pixel rest-frame grid.

    Combined files hold one spectrum; visit files hold several, already shifted to the rest
    frame (their cross-correlation peaks at zero lag), with their heliocentric RVs.
    """
    wave = _payne_wavelength(path)
    star = re.search(r"ap_id_(.+?)_?$", path.stem)
    star_id = star.group(1) if star else path.stem
    with np.load(path) as archive:
        data = {k: archive[k] for k in archive.files}
    if "spectrum" in data:
        rows = [(data["spectrum"], data["spec_err"], {})]
    else:
        rvs = data.get("vhelios", np.full(len(data["spectra"]), np.nan))
        rows = [
            (f, e, {"rv": float(v)})
            for f, e, v in zip(data["spectra"], data["spec_errs"], rvs, strict=True)
        ]
    for index, (flux, error, labels) in enumerate(rows):
        if flux.shape != wave.shape:
            raise SpectrumReadError(path, f"spectrum has {flux.shape} pixels, grid {wave.shape}")
        error = np.where(error >= PAYNE_BAD_ERROR, np.inf, error)
        yield Spectrum(
            wave=wave,
            flux=flux,
            ivar=ivar_from_sigma(error),
            instrument=APOGEE.name,
            resolving_power=APOGEE.resolving_power,
            frame="rest",
            normalised=True,
            source=f"{path}[{index}]" if len(rows) > 1 else str(path),
            star_id=star_id,
            segments=APOGEE.segments(wave),
            labels=labels,
        )


def _payne_wavelength(path: Path) -> np.ndarray:
    for grid in files_beside(path, "apogee_wavelength.npz"):
        return _load_grid(grid)
    raise SpectrumReadError(path, "needs other_data/apogee_wavelength.npz beside it (the grid)")


@functools.lru_cache(maxsize=4)
def _load_grid(grid: Path) -> np.ndarray:
    with np.load(grid) as archive:
        return np.asarray(archive["wavelength"], dtype=np.float64)
