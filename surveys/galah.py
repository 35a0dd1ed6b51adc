"""GALAH / HERMES spectra (air wavelengths, R ≈ 28,000 nominal).

Workshop/DR3-style files: one FITS per star per arm (last digit of the name = arm 1–4), HDU
`normalized`, HDU `relative_error` (σ/flux) and a per-pixel `resolution_profile` (FWHM, Å),
observed frame. DR4 fit products: a table of wave, sob, uob, smod, mob in the rest frame.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from astropy.table import Table

from stargon.core.spectrum import Spectrum, SpectrumReadError, ivar_from_sigma
from stargon.surveys.common import (
    files_beside,
    image_data,
    linear_axis,
    table_columns,
)
from stargon.surveys.instruments import GALAH
from stargon.surveys.registry import Probe, open_fits, register


def _claims_arm(probe: Probe) -> bool:
    return probe.kind == "fits" and "HERMES" in str(probe.header.get("INSTRUME", "")).upper()


def _claims_dr4(probe: Probe) -> bool:
    return probe.kind == "fits" and probe.path.name.endswith("_fit_spectrum.fits")


@register("galah", _claims_arm)
def read_galah_arm(path: Path) -> Iterator[Spectrum]:
    with open_fits(path) as hdul:
        flux = image_data(hdul, "normalized", path, ndim=1)
        relative_error = image_data(hdul, "relative_error", path, ndim=1)
        header = hdul[0].header.copy()
        fwhm = (
            image_data(hdul, "resolution_profile", path, ndim=1)
            if "RESOLUTION_PROFILE" in hdul
            else None
        )
    wave = GALAH.to_vacuum(linear_axis(header, flux.size, path))
    has_profile = fwhm is not None and np.all(fwhm > 0)
    resolving_power = wave / fwhm if has_profile else GALAH.resolving_power_at(wave)
    sobject_id = path.stem[:-1]  # the last digit is the arm
    labels = dict(_dr_table(path).get(sobject_id, {}))
    if "rv" not in labels and isinstance(header.get("RV"), float):
        labels["rv"] = float(header["RV"])
    yield Spectrum(
        wave=wave,
        flux=flux,
        ivar=ivar_from_sigma(relative_error * flux),
        instrument=GALAH.name,
        resolving_power=resolving_power,
        frame="observed",
        normalised=True,
        source=str(path),
        star_id=sobject_id,
        labels={k: v for k, v in labels.items() if np.isfinite(v)},
    )


@functools.lru_cache(maxsize=8)
def _load_dr_table(table_path: Path) -> dict[str, dict[str, float]]:
    """sobject_id → labels from a GALAH data-release table (rv_com, teff_r, logg_r, fe_h_r…)."""
    table = Table.read(table_path, hdu=1)
    columns = {"rv_com": "rv", "teff_r": "teff", "logg_r": "logg", "fe_h_r": "fe_h"}
    columns |= {"alpha_fe_r": "alpha_fe", "e_rv_com": "rv_err"}
    present = {c: n for c, n in columns.items() if c in table.colnames}
    out = {}
    for row in table:
        entry = {}
        for column, name in present.items():
            value = row[column]
            if np.ndim(value) == 0 and not np.ma.is_masked(value):
                entry[name] = float(value)
        out[str(row["sobject_id"])] = entry
    return out


def _dr_table(path: Path) -> dict[str, dict[str, float]]:
    for candidate in files_beside(path, "dr*.fits"):
        return _load_dr_table(candidate)
    return {}


@register("galah_dr4", _claims_dr4)
def read_galah_dr4(path: Path) -> Iterator[Spectrum]:
    with open_fits(path) as hdul:
        cols = table_columns(hdul, 1, path, ("wave", "sob", "uob"))
    if cols["wave"].size < 2:
        raise SpectrumReadError(path, "DR4 spectrum table is empty")
    wave = GALAH.to_vacuum(cols["wave"])
    yield Spectrum(
        wave=wave,
        flux=cols["sob"],
        ivar=ivar_from_sigma(cols["uob"]),
        instrument=GALAH.name,
        resolving_power=GALAH.resolving_power,
        frame="rest",
        normalised=True,
        source=str(path),
        star_id=path.name.split("_")[0],
        segments=GALAH.segments(wave),
    )
