"""DESI coadd and spectra files (coadd-*.fits, spectra-*.fits): one record per target fibre.

Each file holds the B, R and Z arms of many fibres as images (nspec, nwave) on three vacuum
grids that overlap by 40–100 Å; the arms are joined at the middle of each overlap and kept as
detector segments. R per pixel comes from the arm's resolution matrix (band-diagonal, 11
diagonals per pixel): the variance of its kernel, as a Gaussian of equal σ. Flux in
1e-17 erg/s/cm²/Å, observed frame. Sky fibres and unassigned fibres (OBJTYPE other than TGT),
and fibres with no unmasked pixel (broken or unlit), hold no star and are skipped; the Milky
Way Survey target bits travel in `labels`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stargon.core.physics import FWHM_PER_SIGMA
from stargon.core.spectrum import Spectrum
from stargon.surveys.common import image_data
from stargon.surveys.instruments import DESI
from stargon.surveys.registry import Probe, open_fits, register

ARMS = ("B", "R", "Z")
NOMINAL_R = {"B": 2600.0, "R": 3650.0, "Z": 4600.0}  # mid-arm, DESI Collaboration 2022
MWS_BITS = ("MWS_TARGET", "SV3_MWS_TARGET", "SV1_MWS_TARGET", "SV2_MWS_TARGET")


def _claims_desi(probe: Probe) -> bool:
    needed = {"FIBERMAP", *(f"{arm}_{kind}" for arm in ARMS for kind in ("WAVELENGTH", "FLUX"))}
    return probe.kind == "fits" and needed <= set(probe.hdu_names)


@register("desi", _claims_desi)
def read_desi(path: Path) -> Iterator[Spectrum]:
    """Every target fibre of a DESI coadd or spectra file, its arms joined into one record."""
    with open_fits(path) as hdul:
        fibermap = hdul["FIBERMAP"].data
        arms = {arm: _arm(hdul, arm, path) for arm in ARMS}
    cuts = _joins(arms)
    wave = np.concatenate([arms[arm]["wave"][keep] for arm, keep in cuts.items()])
    segments, start = [], 0
    for keep in cuts.values():
        segments.append((start, start + int(keep.sum())))
        start += int(keep.sum())
    names = fibermap.columns.names
    for row in range(len(fibermap)):
        if "OBJTYPE" in names and str(fibermap["OBJTYPE"][row]).strip() != "TGT":
            continue
        joined = {
            kind: np.concatenate([arms[arm][kind][row][keep] for arm, keep in cuts.items()])
            for kind in ("flux", "ivar", "mask", "resolving_power")
        }
        ivar = np.where(joined["mask"] != 0, 0.0, np.nan_to_num(joined["ivar"]))
        if not np.any(ivar > 0):
            continue
        target = int(fibermap["TARGETID"][row])
        yield Spectrum(
            wave=wave,
            flux=np.nan_to_num(joined["flux"]),
            ivar=ivar,
            instrument=DESI.name,
            resolving_power=joined["resolving_power"],
            frame="observed",
            normalised=False,
            source=f"{path}[{row}]",  # the fibre's row (a spectra file: one per exposure)
            star_id=f"DESI {target}",
            segments=segments,
            labels={bits.lower(): float(fibermap[bits][row]) for bits in MWS_BITS if bits in names},
            flux_unit="1e-17 erg / (s cm2 Angstrom)",
        )


def _arm(hdul, arm: str, path: Path) -> dict[str, np.ndarray]:
    """One arm's wavelengths (nwave,) and per-fibre flux, ivar, mask and R (nspec, nwave)."""
    wave = image_data(hdul, f"{arm}_WAVELENGTH", path, 1)
    flux = image_data(hdul, f"{arm}_FLUX", path, 2)
    ivar = image_data(hdul, f"{arm}_IVAR", path, 2)
    has_mask = f"{arm}_MASK" in hdul
    mask = image_data(hdul, f"{arm}_MASK", path, 2) if has_mask else np.zeros_like(flux)
    if f"{arm}_RESOLUTION" in hdul:
        kernels = image_data(hdul, f"{arm}_RESOLUTION", path, 3)
        resolving_power = _resolving_power(kernels, wave, NOMINAL_R[arm])
    else:
        resolving_power = np.full(flux.shape, NOMINAL_R[arm])
    return {"wave": wave, "flux": flux, "ivar": ivar, "mask": mask,
            "resolving_power": resolving_power}  # fmt: skip


def _resolving_power(kernels: np.ndarray, wave: np.ndarray, nominal: float) -> np.ndarray:
    """R = λ / FWHM per fibre and pixel from resolution-matrix diagonals (nspec, ndiag, nwave):
    the kernel's σ in pixels (its second moment about its mean), FWHM = 2.355 σ Δλ. Pixels
    whose kernel is empty (masked fibres) get the arm's nominal R."""
    offsets = np.arange(kernels.shape[1]) - kernels.shape[1] // 2
    total = kernels.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.einsum("d,sdw->sw", offsets, kernels) / total
        variance = np.einsum("d,sdw->sw", offsets**2.0, kernels) / total - mean**2
        fwhm = FWHM_PER_SIGMA * np.sqrt(variance) * np.gradient(wave)
        resolving_power = wave / fwhm
    usable = (total > 0.5) & np.isfinite(resolving_power) & (resolving_power > 0)
    return np.where(usable, resolving_power, nominal)


def _joins(arms: dict[str, dict]) -> dict[str, np.ndarray]:
    """Which pixels of each arm are kept: each overlap is cut at its middle."""
    keep = {arm: np.ones(arms[arm]["wave"].size, dtype=bool) for arm in ARMS}
    for blue, red in itertools.pairwise(ARMS):
        cut = 0.5 * (arms[red]["wave"][0] + arms[blue]["wave"][-1])
        keep[blue] &= arms[blue]["wave"] < cut
        keep[red] &= arms[red]["wave"] >= cut
    return keep
