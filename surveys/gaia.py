"""Gaia DR3 RVS spectra: CSV tables (nm → Å), rest frame, normalised."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from astropy import units as u

from stargon.core.spectrum import Spectrum, SpectrumReadError, ivar_from_sigma
from stargon.surveys.instruments import GAIA_RVS
from stargon.surveys.registry import Probe, register


def _claims_gaia(probe: Probe) -> bool:
    return probe.kind == "csv" and {"source_id", "wavelength", "flux", "flux_error"} <= set(
        probe.columns
    )


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
        instrument=GAIA_RVS.name,
        resolving_power=GAIA_RVS.resolving_power,
        frame="rest",
        normalised=True,
        source=str(path),
        star_id=f"Gaia DR3 {rows[0]['source_id']}",
    )


def _float(text: str) -> float:
    return float(text) if text.strip() else float("nan")
