"""Fit observations: radial velocity, latents and continuum, a batch at a time.

v is found by scanning ±1000 km/s with a small bank of decoded templates (FFT
cross-correlation), then with the star's own template (its GON latent) in steps of a twentieth
of the LSF's FWHM; then (v, z) are optimised jointly for the maximum a posteriori under the
model's latent prior N(0, Λ⁻¹) — never unbounded maximum likelihood, where poorly constrained
latents run away — by Gauss–Newton with the continuum's coefficients free. The latent
covariance is the Laplace (Gauss–Newton) one at the optimum, the continuum and v marginalised.
The velocity's photon-noise limit σ_v = 1/sqrt(Σ ivar (∂m/∂v)²) comes from the model itself
(∂m/∂v = −(λ ∂m/∂λ)/c, the basis's slope in v).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
import torch

from stargon.core.physics import C_KMS, FWHM_PER_SIGMA, doppler_factor, velocity_of_factor
from stargon.core.spectrum import Spectrum
from stargon.model.batch import PixelBatch, make_batch
from stargon.model.continuum import solve_continuum
from stargon.model.gon import StarGON, with_prior
from stargon.model.pseudo_continuum import pseudo_continuum
from stargon.model.pyramid import LsfPyramid

V_MAX = 1000.0  # km/s, the velocity search range
FINE_HALF_WIDTH, FINE_STEP, FINE_STEPS_PER_FWHM = 15.0, 1.0, 20.0
SCAN_BUDGET = 8_000_000  # complex numbers per chunk of the template scan's correlations
SCAN_SAMPLES_PER_SIGMA = 2.5  # the template scan's grid: the LSF σ over at least 2.5 steps
GAIN_TOLERANCE, RELATIVE_GAIN_TOLERANCE = 1e-2, 1e-6  # a step gaining less in χ² ends the fit
CONTINUUM_RIDGE = 1e-6  # relative; keeps the continuum's unused columns out of the projection
RELINEARISE, MAX_ROUNDS = 0.002, 3  # re-linearise when v moved > 0.2 % of the FWHM


@dataclass
class FitResult:
    v_kms: float
    v_err_kms: float
    z: np.ndarray
    z_cov: np.ndarray  # (D, D) Laplace covariance of z
    chi2_dof: float
    n_pix: int
    wave: np.ndarray
    model_flux: np.ndarray  # continuum × normalised model, in the spectrum's flux units
    continuum: np.ndarray  # the fitted polynomial times the model's pseudo-continuum
    normalised_model: np.ndarray  # the model over its own pseudo-continuum: line-free ≈ 1

    @property
    def z_err(self) -> np.ndarray:
        """1σ of each latent."""
        return np.sqrt(np.diag(self.z_cov))


def template_scan(
    model: StarGON, batch: PixelBatch, templates: LsfPyramid, v_max: float = V_MAX
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
    The pixels are laid onto the table grid (thinned to SCAN_SAMPLES_PER_SIGMA steps per σ of
    the LSF) by the adjoint of linear interpolation. Spectra of the same LSF width share the
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
            model, batch.select(index), continuum[index], templates, float(width), v_max
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


def _scan_same_width(model, batch, continuum, templates, sigma, v_max):
    """`template_scan` of spectra whose templates are blurred to one σ: (V,), (G, M, V)."""
    decoder = model.decoder
    flux, ivar, wave = batch.flux.double(), batch.ivar.double(), batch.wave
    table_step = decoder.levels[0].step
    step = max(1, int(sigma / (SCAN_SAMPLES_PER_SIGMA * table_step))) * table_step
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
    lags = math.ceil(math.log(doppler_factor(v_max)) / step)
    grid = torch.arange(
        first - lags, first + n_cells + lags, device=flux.device, dtype=torch.float64
    )
    segment = scan_templates(model, templates, decoder.ln_min + grid * step, sigma).double()
    length = scipy.fft.next_fast_len(segment.shape[-1], real=True)
    spectra = torch.fft.rfft(torch.stack([segment, segment**2]), n=length)  # (2, M, F)
    kernels = torch.fft.rfft(laid, n=length).conj()  # (2, G, F)
    per_chunk = max(1, SCAN_BUDGET // (2 * spectra.shape[1] * spectra.shape[2]))
    correlations = [
        torch.fft.irfft(spectra.unsqueeze(1) * part.unsqueeze(2), n=length)[..., : 2 * lags + 1]
        for part in kernels.split(per_chunk, dim=1)
    ]  # (2, G, M, lags) by chunks of G, so that memory stays within SCAN_BUDGET
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


def template_pyramid(model: StarGON, prototypes: torch.Tensor | None = None) -> LsfPyramid:
    """The pyramid of decoded template spectra for the coarse scan (z = 0 when no prototypes)."""
    z = torch.zeros(1, model.config.latent_dim) if prototypes is None else prototypes
    with torch.no_grad():
        return model.decoder.pyramid(model.decoder.templates(z.to(model.decoder.table)))


def find_velocities(model: StarGON, batch: PixelBatch, pyramid=None, templates=None) -> np.ndarray:
    """v (B,) of every spectrum in the batch: a template-bank scan over ±1000 km/s (FFT
    cross-correlations; spectra of one LSF width share the templates' transforms) and a
    parabola through the best template's minimum; then each star's own template (its GON
    latent at that velocity, encoded for the whole batch at once) scanned around it in steps
    of a twentieth of the LSF's FWHM (at least 1 km/s), and a parabola through the minimum."""
    pyramid = model.decoder.pyramid() if pyramid is None else pyramid
    templates = template_pyramid(model) if templates is None else templates
    n_spectra = len(batch.flux)
    best, half_width = np.zeros(n_spectra), np.zeros(n_spectra)
    for i, (v_grid, chi2) in enumerate(template_scan(model, batch, templates)):
        closest = chi2[np.unravel_index(int(np.argmin(chi2)), chi2.shape)[0]]
        best[i] = _parabola_minimum(v_grid, closest)
        half_width[i] = max(FINE_HALF_WIDTH, float(np.diff(v_grid).max()))
    trial = batch.with_velocity(
        torch.as_tensor(best, dtype=batch.flux.dtype, device=batch.flux.device)
    )
    z = model.encode(trial, model.basis(trial, pyramid))
    fwhm = lsf_fwhm_kms(batch)
    step = np.maximum(FINE_STEP, fwhm / FINE_STEPS_PER_FWHM)
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


def find_velocity(model: StarGON, batch: PixelBatch, pyramid=None, templates=None) -> float:
    """v of a batch of one spectrum (`find_velocities`)."""
    return float(find_velocities(model, batch, pyramid, templates)[0])


def fit_spectra(
    model: StarGON,
    spectra: Sequence[Spectrum],
    fit_velocity: bool | None = None,
    refine_steps: int = 20,
    device: str | torch.device = "cpu",
    pyramid: LsfPyramid | None = None,
    templates: LsfPyramid | None = None,
) -> list[FitResult]:
    """Best (v, z, continuum) for each spectrum, all at once: one padded batch, one batched
    velocity search, encoder step and Gauss–Newton refinement (each spectrum stops on its own);
    a spectrum's result does not depend on the others in its batch. Rest-frame spectra keep
    v = 0 unless asked.

    Pass `pyramid` and `templates` (from `model.decoder.pyramid()` and `template_pyramid`) when
    fitting many batches with one model: they do not depend on the spectra.
    """
    device = torch.device(device)
    moving = np.array(
        [s.frame == "observed" if fit_velocity is None else fit_velocity for s in spectra]
    )
    batch = make_batch(spectra, used_columns_only=True, design_dtype=torch.float64).to(device)
    if pyramid is None:
        with torch.no_grad():
            pyramid = model.decoder.pyramid()
    v0 = np.zeros(len(spectra))
    if moving.any():
        rows = np.flatnonzero(moving)
        v0[rows] = find_velocities(model, batch.select(rows), pyramid, templates)
    v = torch.as_tensor(v0, dtype=batch.flux.dtype, device=device)
    moving_mask = torch.as_tensor(moving, device=device)
    z, v, covariance, linearised = _refine(model, batch, pyramid, v, moving_mask, refine_steps)
    return _results(model, spectra, linearised, z, v, covariance)


def fit_spectrum(
    model: StarGON,
    spectrum: Spectrum,
    fit_velocity: bool | None = None,
    refine_steps: int = 20,
    device: str | torch.device = "cpu",
    pyramid: LsfPyramid | None = None,
    templates: LsfPyramid | None = None,
) -> FitResult:
    """`fit_spectra` of one spectrum."""
    return fit_spectra(model, [spectrum], fit_velocity, refine_steps, device, pyramid, templates)[0]


def _refine(model, batch, pyramid, v, moving, steps):
    """Joint MAP (z, v) by damped Gauss–Newton, from the encoder's step at the scan's v.

    The basis is linear in v over the sub-km/s steps left after the scan, so it is linearised
    around v (its slope read with it) instead of being re-read from the table each step;
    a spectrum whose v moved by more than RELINEARISE × its LSF's FWHM is linearised again
    at its new v and refined once more (MAX_ROUNDS in all). Spectra with v held keep a zero v
    column. Returns z, v, the Laplace covariance of z and the final linearisation."""
    linearised = _linearise(model, batch, pyramid, v, moving)
    z = model.encode(batch.with_velocity(v), linearised.basis0)
    fwhm = torch.as_tensor(lsf_fwhm_kms(batch), dtype=v.dtype, device=v.device)
    rows = torch.arange(len(v), device=v.device)
    for round_ in range(MAX_ROUNDS):
        part = linearised.rows(rows)
        z[rows], v[rows] = _gauss_newton(model, part, z[rows], v[rows], steps)
        moved = moving[rows] & ((v[rows] - part.v0).abs() > RELINEARISE * fwhm[rows])
        rows = rows[moved]
        if not len(rows) or round_ == MAX_ROUNDS - 1:
            break
        linearised.replace(rows, _linearise(model, batch.select(rows), pyramid, v[rows], True))
    normal, _ = linearised.normal_equations(model, z, v)
    covariance = torch.linalg.inv(normal)[:, : z.shape[-1], : z.shape[-1]]
    return z, v, covariance, linearised


@dataclass
class _Linearised:
    """Spectra with their basis linearised in v around v0, the prior's precision per
    parameter (z, v) and which spectra fit v; `rows` takes some of them."""

    batch: PixelBatch
    basis0: torch.Tensor  # (K+1, B, P)
    slope: torch.Tensor  # ∂basis/∂v, (K+1, B, P)
    v0: torch.Tensor
    penalty: torch.Tensor  # (B, D + 1)
    moving: torch.Tensor  # (B,) bool

    def rows(self, index: torch.Tensor) -> _Linearised:
        if len(index) == len(self.v0):  # all of them, in order: no copy
            return self
        return _Linearised(self.batch.select(index), self.basis0[:, index], self.slope[:, index],
                           self.v0[index], self.penalty[index], self.moving[index])  # fmt: skip

    def replace(self, index: torch.Tensor, other: _Linearised) -> None:
        """Take `other`'s linearisation for the spectra at `index`."""
        self.basis0[:, index], self.slope[:, index] = other.basis0, other.slope
        self.v0[index] = other.v0

    def basis(self, v: torch.Tensor) -> torch.Tensor:
        return self.basis0 + (v - self.v0).to(self.basis0.dtype)[:, None] * self.slope

    def posterior(self, model: StarGON, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """−2 ln posterior per spectrum: χ² + zᵀΛz."""
        with torch.no_grad():
            batch = self.batch.with_velocity(v)
            return model.chi2(z, self.basis(v), batch) * batch.n_valid + model.prior_term(z)

    def flux_slope(self, model: StarGON, z: torch.Tensor) -> torch.Tensor:
        """∂f/∂v (B, P) of the normalised model: S₀ + h(z)·S."""
        with torch.no_grad():
            return self.slope[0] + torch.einsum("bk,kbp->bp", model.decoder.h(z), self.slope[1:])

    def normal_equations(self, model: StarGON, z: torch.Tensor, v: torch.Tensor):
        return _normal_equations(model, self, z, v)


def _linearise(model, batch, pyramid, v, moving) -> _Linearised:
    """The basis at v and its derivative in v, with the prior's precision."""
    with torch.no_grad():
        basis0, slope = model.decoder.pixel_basis_and_slope(
            batch.wave, v, batch.resolving_power, pyramid
        )
    moving = torch.as_tensor(moving, device=v.device).expand(len(v))
    penalty = torch.full(
        (len(v), model.config.latent_dim + 1),
        model.config.prior_precision,
        dtype=torch.float64,
        device=v.device,
    )
    penalty[:, -1] = (~moving).double()  # v has no prior; a held v stays put
    return _Linearised(batch, basis0, slope, v.clone(), penalty, moving)


def _gauss_newton(model, linearised: _Linearised, z, v, steps):
    """Gauss–Newton on −2 ln posterior = χ² + zᵀΛz over (z, v) with the continuum re-solved at
    every step; a step that does not lower it is halved (up to 8 times). Each spectrum stops
    on its own — when its step promises less than its tolerance, gains less, or cannot be
    saved by halving — and is left out of the later steps, so its result does not depend on
    its batch-mates. The tolerance, GAIN_TOLERANCE of χ² (a tenth of σ), grows with χ² where
    float32 sums of many pixels are noisier than that (~2×10⁻⁷ χ²)."""
    z, v = z.detach().clone(), v.detach().clone()
    current = linearised.posterior(model, z, v)
    tolerance = (RELATIVE_GAIN_TOLERANCE * current).clamp_min(GAIN_TOLERANCE)
    active = torch.ones(len(z), dtype=torch.bool, device=z.device)
    for _ in range(steps):
        rows = torch.nonzero(active).squeeze(-1)
        part = linearised.rows(rows)
        new_z, new_v, new_posterior, accepted = _damped_step(
            model, part, z[rows], v[rows], current[rows], tolerance[rows]
        )
        gain = current[rows] - new_posterior
        z[rows], v[rows], current[rows] = new_z, new_v, new_posterior
        active[rows] = accepted & (gain >= tolerance[rows])  # unsaved or converged: it stops
        if not bool(active.any()):
            break
    return z, v


def _damped_step(model, part: _Linearised, z, v, current, tolerance: torch.Tensor):
    """One Gauss–Newton step for each spectrum of `part`, halved until it lowers that
    spectrum's posterior (8 halvings at most): (z, v, posterior, accepted) per spectrum. A
    spectrum whose full step promises a gain below `tolerance` (the quadratic model's
    rhsᵀ·step) has converged: it is not tried and not accepted."""
    normal, rhs = part.normal_equations(model, z, v)
    step = torch.linalg.solve(normal, rhs.unsqueeze(-1)).squeeze(-1)
    promised = (rhs * step).sum(-1)
    step = step.to(z.dtype)
    dim = z.shape[-1]
    accepted = torch.zeros(len(z), dtype=torch.bool, device=z.device)
    new_z, new_v, new_posterior = z.clone(), v.clone(), current.clone()
    if not bool((promised >= tolerance).any()):
        return new_z, new_v, new_posterior, accepted
    for _ in range(8):
        trial_z, trial_v = z + step[:, :dim], v + step[:, dim]
        trial = part.posterior(model, trial_z, trial_v)
        better = (trial <= current) & ~accepted & (promised >= tolerance)
        new_z[better], new_v[better], new_posterior[better] = (
            trial_z[better], trial_v[better], trial[better]
        )  # fmt: skip
        accepted |= better
        if bool((accepted | (promised < tolerance)).all()):
            break
        step = torch.where(accepted[:, None], step, step / 2)
    return new_z, new_v, new_posterior, accepted


def _normal_equations(model, linearised: _Linearised, z, v):
    """JᵀWJ + Λ and JᵀW r − Λθ (float64) for θ = (z, v) with the continuum free: the
    Gauss–Newton system of (θ, continuum coefficients) reduced to θ. Holding the continuum in
    J would ignore that a broad change of f(z) is partly taken up by the continuum, and the
    steps would converge only linearly, ~15 % per step.

    The reduction projects W^½J off the continuum's columns W^½A by a QR factorisation of A
    (stacked on a tiny ridge, so that a column no pixel uses removes nothing), in float32:
    forming JᵀWJ − JᵀWA (AᵀWA)⁻¹AᵀWJ instead would cancel digits and need float64."""
    batch, basis = linearised.batch, linearised.basis(v)
    with torch.no_grad():
        normalised, dfdz = model.decoder.decode_with_jacobian(z, basis)
        continuum = solve_continuum(batch.design, batch.flux, batch.ivar, normalised)
    dfdv = (linearised.flux_slope(model, z) * linearised.moving[:, None]).unsqueeze(-1)
    root = batch.ivar.clamp_min(0).sqrt()
    jacobian = torch.cat([dfdz, dfdv], -1) * (continuum * root).unsqueeze(-1)  # W^½ J
    design = batch.design.to(normalised.dtype)
    columns = design * (normalised * root).unsqueeze(-1)  # W^½ ∂m/∂(continuum coeffs)
    residual = ((batch.flux - continuum * normalised) * root).unsqueeze(-1)
    size = (columns**2).sum(1)  # (B, C)
    ridge = CONTINUUM_RIDGE * size.sum(-1) / (size > 0).sum(-1).clamp_min(1)
    eye = torch.eye(columns.shape[-1], dtype=columns.dtype, device=columns.device)
    stacked = torch.cat([columns, ridge.sqrt()[:, None, None] * eye], dim=1)
    q = torch.linalg.qr(stacked).Q[:, : columns.shape[1]]
    projected = torch.baddbmm(jacobian, q, q.transpose(1, 2) @ jacobian, alpha=-1)
    theta = torch.cat([z, v.to(z.dtype).unsqueeze(-1)], dim=-1).double()
    normal = (projected.transpose(1, 2) @ projected).double()
    gradient = (projected * residual).sum(1).double()
    return with_prior(normal, gradient, linearised.penalty, theta)


def lsf_fwhm_kms(batch: PixelBatch) -> np.ndarray:
    """The LSF's FWHM in km/s of every spectrum (B,): c over its valid pixels' median R."""
    resolving_power = batch.resolving_power.masked_fill(batch.ivar <= 0, float("nan"))
    return C_KMS / resolving_power.double().nanmedian(-1).values.cpu().numpy()


def _results(model, spectra, linearised: _Linearised, z, v, covariance) -> list[FitResult]:
    """Per-spectrum results. The model is drawn from the final linearisation: v is within
    RELINEARISE × FWHM of where the basis was linearised, so it differs from the basis read
    at v by far less than the noise; ∂m/∂v = C ∂f/∂v is its slope."""
    batch, z, v = linearised.batch, z.detach(), v.detach()
    with torch.no_grad():
        full, normalised = model.model_flux(z, linearised.basis(v), batch)
        continuum = full / normalised.where(normalised != 0, torch.ones_like(normalised))
        dm_dv = continuum * linearised.flux_slope(model, z)
    information = (batch.ivar * dm_dv**2).sum(-1).cpu().numpy()
    n_valid = (batch.ivar > 0).sum(-1).cpu().numpy()
    chi2 = (batch.ivar * (batch.flux - full) ** 2).sum(-1).cpu().numpy()
    continuum = continuum.cpu()
    full, normalised = full.cpu().numpy(), normalised.cpu().numpy()
    scale, z, v = batch.scale.cpu().numpy(), z.cpu().numpy(), v.cpu().numpy()
    covariance = covariance.cpu().numpy()
    results = []
    for b, spectrum in enumerate(spectra):
        wave = spectrum.wave[spectrum.valid]
        n = wave.size
        normalised_model = normalised[b, :n]
        level = pseudo_continuum(wave, normalised_model)  # so that the normalised model sits at 1
        results.append(
            FitResult(
                v_kms=float(v[b]),
                v_err_kms=float(1 / np.sqrt(information[b])) if information[b] > 0 else math.inf,
                z=z[b],
                z_cov=covariance[b],
                chi2_dof=float(chi2[b] / max(int(n_valid[b]) - z.shape[1] - 1, 1)),
                n_pix=int(n_valid[b]),
                wave=wave,
                model_flux=full[b, :n] * scale[b],
                continuum=continuum[b, :n].numpy() * scale[b] * level,
                normalised_model=normalised_model / level,
            )
        )
    return results
