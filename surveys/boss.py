"""SDSS BOSS coadds (spec-*.fits): log10 vacuum wavelengths, observed frame, R per pixel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stargon.core.physics import C_KMS
from stargon.core.spectrum import Spectrum
from stargon.surveys.common import (
    table_columns,
)
from stargon.surveys.instruments import BOSS, resolving_power_from_lsf_sigma
from stargon.surveys.registry import Probe, open_fits, register


def _claims_boss(probe: Probe) -> bool:
    return probe.kind == "fits" and "COADD" in probe.hdu_names


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
    resolving_power = resolving_power_from_lsf_sigma(sigma_loglam)
    resolving_power = np.where(np.isfinite(resolving_power), resolving_power, BOSS.resolving_power)
    plate, mjd, fiber = (header.get(k, "?") for k in ("PLATEID", "MJD", "FIBERID"))
    yield Spectrum(
        wave=wave,
        flux=cols["flux"],
        ivar=np.where(cols["and_mask"] != 0, 0.0, cols["ivar"]),
        instrument=BOSS.name,
        resolving_power=resolving_power,
        frame="observed",
        normalised=False,
        source=str(path),
        star_id=f"SDSS {plate}-{mjd}-{fiber}",
        segments=BOSS.segments(wave),
        labels={"rv": float(z * C_KMS)} if np.isfinite(z) else {},
        flux_unit="1e-17 erg / (s cm2 Angstrom)",
    )


def _spall_redshift(hdul) -> float:
    if "SPALL" not in hdul:
        return float("nan")
    data = hdul["SPALL"].data
    return float(data["Z"][0]) if "Z" in data.columns.names else float("nan")
