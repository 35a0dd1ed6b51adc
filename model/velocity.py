"""The radial velocity search: a template-bank scan over ±v_max by FFT cross-correlation, then
each star's own template (its GON latent) scanned around the best velocity.

A Doppler shift is a translation in ln λ and an LSF of constant R a fixed kernel there, so the
bank's templates are read once per LSF width and every shift is one lag of a correlation. The
result seeds the MAP refinement (`model.refine`); `model.fitter.Fitter` runs both.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft
import torch

from stargon.core.physics import C_KMS, FWHM_PER_SIGMA, doppler_factor, velocity_of_factor
from stargon.model.batch import PixelBatch
from stargon.model.continuum import solve_continuum
from stargon.model.fit_config import FitConfig
from stargon.model.gon import StarGON
from stargon.model.pyramid import LsfPyramid


def template_scan(
    model: StarGON, batch: PixelBatch, templates: LsfPyramid, config: FitConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each spectrum of the batch: the velocities within ±v_max that the template table
    resolves (V,) and χ²/n (M, V) of the M template spectra at each, by cross-correlation in
    ln λ.

    A Doppler shift is a translation in ln λ and an LSF of constant R a fixed kernel there, so
    the templates are read once at the spectrum's median R (on a 1 % grid) on an even ln λ
    grid (`scan_templates`: the template bank's pyramid, read as `observe` reads the basis),
    and every shift is one lag of a correlation: with the continuum C solved once (v = 0)
    and a free amplitude per lag, χ²(s) = Σ ivar f² − (Σ ivar f C T_s)² / Σ ivar C² T_s², both
    sums one FFT each.
    The pixels are laid onto the table grid (thinned to `scan_samples_per_sigma` steps per σ
    of the LSF) by the adjoint of linear interpolation. Spectra of the same LSF width share the
    templates' transforms.
    """
    with torch.no_grad():
        reference = model.observation_basis(batch.wave, 0.0, batch.resolving_power, templates)[0]
        continuum = solve_continuum(
            batch.design.double(), batch.flux.double(), batch.ivar.double(), reference.double()
        )
    widths = _scan_widths(batch)
    scans: list = [None] * len(widths)
    for width in np.unique(widths):
        rows = np.flatnonzero(widths == width)
        index = torch.as_tensor(rows, device=batch.flux.device)
        v_grid, chi2 = _scan_same_width(
            model, batch.select(index), continuum[index], templates, float(width), config
        )
        for row, values in zip(rows, chi2, strict=True):
            scans[row] = (v_grid, values)
    return scans


def _scan_widths(batch: PixelBatch) -> np.ndarray:
    """The LSF σ in ln λ the scan blurs each spectrum's templates to: its median R's, on a
    1 % grid so that spectra of one instrument share it."""
    resolving_power = batch.resolving_power.masked_fill(batch.ivar <= 0, float("nan"))
    median = resolving_power.double().nanmedian(-1).values.cpu().numpy()
    median = np.where(np.isfinite(median), median, np.inf)  # no valid pixel: no blur
    sigma = 1.0 / (FWHM_PER_SIGMA * median)
    with np.errstate(divide="ignore"):
        return np.where(sigma > 0, np.exp(np.round(np.log(sigma) / 0.01) * 0.01), 0.0)


def _scan_same_width(model, batch, continuum, templates, sigma, config: FitConfig):
    """`template_scan` of spectra whose templates are blurred to one σ: (V,), (G, M, V)."""
    decoder = model.decoder
    flux, ivar, wave = batch.flux.double(), batch.ivar.double(), batch.wave
    table_step = decoder.levels[0].step
    step = max(1, int(sigma / (config.scan_samples_per_sigma * table_step))) * table_step
    position = (torch.log(wave) - decoder.ln_min) / step
    cell = position.floor().long()
    frac = position - cell
    good = ivar > 0
    first = int(cell[good].min())
    n_cells = int(cell[good].max()) - first + 2
    cell = (cell - first).clamp(0, n_cells - 2)  # padding pixels (no weight) kept in range
    weights = torch.stack([ivar * flux * continuum, ivar * continuum**2])  # (2, G, P)
    offset = torch.arange(len(flux), device=flux.device)[:, None] * n_cells
    laid = torch.zeros(2, len(flux) * n_cells, dtype=torch.float64, device=flux.device)
    laid.index_add_(1, (cell + offset).reshape(-1), (weights * (1 - frac)).reshape(2, -1))
    laid.index_add_(1, (cell + 1 + offset).reshape(-1), (weights * frac).reshape(2, -1))
    laid = laid.reshape(2, len(flux), n_cells)
    lags = math.ceil(math.log(doppler_factor(config.v_max)) / step)
    grid = torch.arange(
        first - lags, first + n_cells + lags, device=flux.device, dtype=torch.float64
    )
    segment = scan_templates(model, templates, decoder.ln_min + grid * step, sigma).double()
    length = scipy.fft.next_fast_len(segment.shape[-1], real=True)
    spectra = torch.fft.rfft(torch.stack([segment, segment**2]), n=length)  # (2, M, F)
    kernels = torch.fft.rfft(laid, n=length).conj()  # (2, G, F)
    per_chunk = max(1, config.scan_budget // (2 * spectra.shape[1] * spectra.shape[2]))
    correlations = [
        torch.fft.irfft(spectra.unsqueeze(1) * part.unsqueeze(2), n=length)[..., : 2 * lags + 1]
        for part in kernels.split(per_chunk, dim=1)
    ]  # (2, G, M, lags) by chunks of G, so that memory stays within the scan budget
    cross, norm = torch.cat(correlations, dim=1)
    total = (ivar * flux**2).sum(-1)
    chi2 = (total[:, None, None] - cross**2 / norm.clamp_min(1e-300)) / batch.n_valid[:, None, None]
    shifts = lags - np.arange(2 * lags + 1)
    return velocity_of_factor(np.exp(shifts[::-1] * step)), chi2.flip(-1).cpu().numpy()


def scan_templates(
    model: StarGON, templates: LsfPyramid, ln_rest: torch.Tensor, sigma: float
) -> torch.Tensor:
    """The template spectra (M, len(ln_rest)) at rest-frame ln λ through an LSF of σ (in
    ln λ; 0: none), read as `observe` reads the basis."""
    resolving_power = 1.0 / (FWHM_PER_SIGMA * sigma) if sigma > 0 else math.inf
    with torch.no_grad():
        return model.decoder.read(templates, ln_rest, resolving_power)[0]


def latent_scan(
    model: StarGON, batch: PixelBatch, pyramid: LsfPyramid, z: torch.Tensor, v_grid
) -> np.ndarray:
    """χ²/n (B, V) of each spectrum's own model (latent z held fixed) at each of its
    velocities `v_grid` (B, V).

    The continuum is smooth and hardly changes across a few km/s, so it is solved once, at each
    grid's centre, and each velocity only gets a closed-form amplitude.
    """
    n_spectra = len(batch.flux)
    v_grid = np.broadcast_to(
        np.asarray(v_grid, dtype=float), (n_spectra, np.shape(v_grid)[-1])
    ).copy()
    flux, ivar = batch.flux, batch.ivar
    device = flux.device
    centre = torch.as_tensor(np.median(v_grid, axis=1), dtype=torch.float64, device=device)
    velocities = torch.as_tensor(v_grid, dtype=torch.float64, device=device)
    with torch.no_grad():
        models = model.decoder.pixel_model(
            z, batch.wave, torch.cat([centre[:, None], velocities], 1), batch.resolving_power,
            pyramid,
        )  # fmt: skip
        continuum = solve_continuum(batch.design, flux, ivar, models[:, 0])
        shape = continuum.unsqueeze(1) * models[:, 1:]
        weighted = ivar.unsqueeze(1) * shape
        amplitude = (weighted * flux.unsqueeze(1)).sum(-1) / (weighted * shape).sum(-1).clamp_min(
            1e-30
        )
        residual = ivar.unsqueeze(1) * (flux.unsqueeze(1) - amplitude.unsqueeze(-1) * shape) ** 2
        return (residual.sum(-1) / batch.n_valid.unsqueeze(1)).cpu().numpy()


def template_bank(model: StarGON, prototypes: torch.Tensor | None = None) -> LsfPyramid:
    """The pyramid of decoded template spectra for the coarse scan (z = 0 when no prototypes)."""
    z = torch.zeros(1, model.config.latent_dim) if prototypes is None else prototypes
    with torch.no_grad():
        return model.decoder.pyramid(model.decoder.templates(z.to(model.decoder.table)))


def find_velocities(
    model: StarGON,
    batch: PixelBatch,
    pyramid: LsfPyramid,
    templates: LsfPyramid,
    config: FitConfig,
) -> np.ndarray:
    """v (B,) of every spectrum in the batch: a template-bank scan over ±v_max (FFT
    cross-correlations; spectra of one LSF width share the templates' transforms) and a
    parabola through the best template's minimum; then each star's own template (its GON
    latent at that velocity, encoded for the whole batch at once) scanned around it in steps
    of a twentieth of the LSF's FWHM (at least 1 km/s), and a parabola through the minimum."""
    n_spectra = len(batch.flux)
    best, half_width = np.zeros(n_spectra), np.zeros(n_spectra)
    for i, (v_grid, chi2) in enumerate(template_scan(model, batch, templates, config)):
        closest = chi2[np.unravel_index(int(np.argmin(chi2)), chi2.shape)[0]]
        best[i] = _parabola_minimum(v_grid, closest)
        half_width[i] = max(config.fine_half_width, float(np.diff(v_grid).max()))
    trial = batch.with_velocity(
        torch.as_tensor(best, dtype=batch.flux.dtype, device=batch.flux.device)
    )
    z = model.encode(trial, model.basis(trial, pyramid))
    fwhm = lsf_fwhm_kms(batch)
    step = np.maximum(config.fine_step, fwhm / config.fine_steps_per_fwhm)
    reach = np.ceil(half_width / step)  # steps each side, per spectrum
    k = np.arange(-reach.max(), reach.max() + 1)
    fine = latent_scan(model, batch, pyramid, z, best[:, None] + k * step[:, None])
    fine[np.abs(k)[None, :] > reach[:, None]] = np.inf  # each spectrum its own window
    return np.array([_parabola_minimum(best[b] + k * step[b], row) for b, row in enumerate(fine)])


def _parabola_minimum(grid: np.ndarray, values: np.ndarray) -> float:
    """The minimum of `values` on an even `grid`, refined by a parabola through its
    neighbours (kept within one step of the lowest point)."""
    i = int(np.clip(np.argmin(values), 1, len(values) - 2))
    y0, y1, y2 = values[i - 1 : i + 2]
    curvature = y0 - 2 * y1 + y2
    offset = 0.5 * (y0 - y2) / curvature if np.isfinite(curvature) and curvature > 0 else 0.0
    return float(grid[i] + np.clip(offset, -1, 1) * (grid[1] - grid[0]))


def lsf_fwhm_kms(batch: PixelBatch) -> np.ndarray:
    """The LSF's FWHM in km/s of every spectrum (B,): c over its valid pixels' median R."""
    resolving_power = batch.resolving_power.masked_fill(batch.ivar <= 0, float("nan"))
    return C_KMS / resolving_power.double().nanmedian(-1).values.cpu().numpy()
