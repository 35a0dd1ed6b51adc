"""Spectra as tensors for the model: pixels (all or a random subset), continuum design, scale.

Pixels the atmosphere shapes (telluric bands, sky lines) and detector edges enter with ivar 0
(`stargon.surveys.atmosphere`), so every user of a batch — training, fitting, evaluation — sees
the same mask. Each spectrum's flux is divided by its median |flux| (ivar multiplied accordingly),
so flux-calibrated and normalised spectra share one numerical range; χ² does not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from stargon.core.spectrum import Spectrum
from stargon.model.continuum import legendre_design
from stargon.surveys.atmosphere import masked_ivar
from stargon.surveys.instruments import (
    FLUX_CALIBRATED_CONTINUUM_DEGREE,
    NORMALISED_CONTINUUM_DEGREE,
    instrument_of,
)

MAX_SEGMENTS = 4


@dataclass
class PixelBatch:
    """B spectra × P pixels; padding pixels have ivar 0."""

    wave: torch.Tensor  # (B, P) observed vacuum Å, float64
    flux: torch.Tensor  # (B, P) divided by `scale`
    ivar: torch.Tensor  # (B, P)
    resolving_power: torch.Tensor  # (B, P)
    design: torch.Tensor  # (B, P, C) continuum basis
    v_kms: torch.Tensor  # (B,) velocity used to read the rest frame
    scale: torch.Tensor  # (B,) the flux unit divided out

    @property
    def n_valid(self) -> torch.Tensor:
        return (self.ivar > 0).sum(-1).clamp_min(1)

    def to(self, device: torch.device | str) -> PixelBatch:
        return PixelBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, rows: Sequence[int] | torch.Tensor) -> PixelBatch:
        """The spectra at `rows`, as a batch of their own (padding kept)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.flux.device)
        return PixelBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def with_velocity(self, v_kms: torch.Tensor) -> PixelBatch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return PixelBatch(**(values | {"v_kms": v_kms}))


def continuum_degree(spectrum: Spectrum) -> int:
    """Legendre degree of the continuum per segment: a residual tilt for spectra the survey
    normalised, the instrument's own degree (the SED's shape) for flux-calibrated ones."""
    if spectrum.normalised:
        return NORMALISED_CONTINUUM_DEGREE
    known = instrument_of(spectrum.instrument)
    return known.continuum_degree if known else FLUX_CALIBRATED_CONTINUUM_DEGREE


def make_batch(
    spectra: Sequence[Spectrum],
    v_kms: Sequence[float] | None = None,
    n_pixels: int | None = None,
    rngs: Sequence[np.random.Generator] | None = None,
    error_floor: float = 0.0,
    dtype: torch.dtype = torch.float32,
    mask_atmosphere: bool = True,
    used_columns_only: bool = False,
    design_dtype: torch.dtype | None = None,
) -> PixelBatch:
    """Tensors for a list of spectra: every valid pixel (the atmosphere's with ivar 0, so
    results line up with `spectrum.valid`), or `n_pixels` drawn at random among unmasked ones.

    `error_floor` adds a fractional error in quadrature (σ² + (floor·flux)²): a guard, used
    in training only, against spectra whose noise is far below the model's accuracy.
    `used_columns_only` drops the continuum columns no spectrum of the batch uses (28 → 7 for
    MILES): fitting's solves get cheaper, but the design's width then depends on the batch,
    so training (whose ranks must agree to the last bit) keeps every column. `design_dtype`
    (default `dtype`) is the dtype the continuum is solved in (`solve_continuum`).
    """
    rows = []
    for index, spectrum in enumerate(spectra):
        ivar = masked_ivar(spectrum) if mask_atmosphere else spectrum.ivar
        if n_pixels is None:  # every valid pixel, masked ones kept with ivar 0 (for plotting)
            chosen = np.flatnonzero(spectrum.valid)
        else:
            rng = rngs[index] if rngs is not None else np.random.default_rng(index)
            usable = np.flatnonzero(ivar > 0)
            chosen = np.sort(rng.choice(usable, n_pixels, replace=usable.size < n_pixels))
        rows.append(_pixels(spectrum, ivar, chosen, error_floor))
    width = max(r[0].size for r in rows)
    degree = max(continuum_degree(s) for s in spectra)
    arrays = [np.zeros((len(rows), width)) for _ in range(6)]
    scales = np.ones(len(rows))
    for b, (wave, flux, ivar, res, seg, x) in enumerate(rows):
        n = wave.size
        for array, values in zip(arrays, (wave, flux, ivar, res, seg, x), strict=True):
            array[b, :n] = values
        arrays[0][b, n:] = wave[-1]  # padding: any wavelength and R the spectrum has
        arrays[3][b, n:] = res[-1]
        scales[b] = np.median(np.abs(flux[ivar > 0])) or 1.0
    wave, flux, ivar, res, seg, x = (torch.as_tensor(a) for a in arrays)
    flux = flux / torch.as_tensor(scales)[:, None]
    ivar = ivar * torch.as_tensor(scales)[:, None] ** 2
    design = legendre_design(x, seg.long(), MAX_SEGMENTS, degree)
    mask = _degree_mask(spectra, degree)
    if used_columns_only:  # drop the columns no spectrum of the batch uses
        segments = torch.as_tensor([min(len(s.segments), MAX_SEGMENTS) for s in spectra])
        in_use = torch.arange(MAX_SEGMENTS).repeat_interleave(degree + 1) < segments[:, None]
        used = (mask * in_use).any(0)
        design, mask = design[..., used], mask[:, used]
    design = design * mask[:, None, :]
    velocities = torch.as_tensor(np.zeros(len(rows)) if v_kms is None else np.asarray(v_kms))
    return PixelBatch(
        wave=wave.to(torch.float64),  # kept in double: Doppler shifts are tiny
        flux=flux.to(dtype),
        ivar=ivar.to(dtype),
        resolving_power=res.to(dtype),
        design=design.to(design_dtype or dtype),
        v_kms=velocities.to(dtype),
        scale=torch.as_tensor(scales).to(dtype),
    )


def _pixels(spectrum: Spectrum, ivar: np.ndarray, index: np.ndarray, error_floor: float):
    """Per-pixel arrays of one spectrum at `index`: wave, flux, ivar, R, segment, x."""
    segment = np.zeros(spectrum.n_pixels)
    x = np.zeros(spectrum.n_pixels)
    for s, (start, stop) in enumerate(spectrum.segments[:MAX_SEGMENTS]):
        segment[start:stop] = s
        lo, hi = spectrum.wave[start], spectrum.wave[stop - 1]
        x[start:stop] = 2 * (spectrum.wave[start:stop] - lo) / max(hi - lo, 1e-9) - 1
    if error_floor > 0:
        with np.errstate(divide="ignore"):
            var = np.where(ivar > 0, 1.0 / np.where(ivar > 0, ivar, 1.0), np.inf)
        ivar = np.where(ivar > 0, 1.0 / (var + (error_floor * spectrum.flux) ** 2), 0.0)
    resolving_power = np.broadcast_to(spectrum.resolving_power, spectrum.wave.shape)
    return tuple(
        np.asarray(a)[index]
        for a in (spectrum.wave, spectrum.flux, ivar, resolving_power, segment, x)
    )


def _degree_mask(spectra: Sequence[Spectrum], degree: int) -> torch.Tensor:
    """Switch off the Legendre orders above each spectrum's own continuum degree."""
    order = torch.arange(degree + 1).repeat(MAX_SEGMENTS)
    limits = torch.tensor([continuum_degree(s) for s in spectra])
    return (order[None, :] <= limits[:, None]).to(torch.float64)
