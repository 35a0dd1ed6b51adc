"""Fit one observation: radial velocity, latents and continuum.

v is found by scanning a velocity grid with a small bank of decoded templates, then with the
star's own template (its GON latent) on a 1 km/s grid; then (v, z) are optimised jointly for
the maximum a posteriori under the model's latent prior N(0, Λ⁻¹) — never unbounded maximum
likelihood, where poorly constrained latents run away. The latent covariance is the Laplace
(Gauss–Newton) one, (JᵀWJ + Λ)⁻¹ at the optimum. The velocity's photon-noise limit
σ_v = 1/sqrt(Σ ivar (∂m/∂v)²) comes from the model itself (∂m/∂v = −(λ ∂m/∂λ)/c, by
forward-mode autograd).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import jvp

from stargon.core.physics import C_KMS, FWHM_PER_SIGMA, doppler_factor, velocity_of_factor
from stargon.core.spectrum import Spectrum
from stargon.model.batch import PixelBatch, make_batch
from stargon.model.continuum import solve_continuum
from stargon.model.decoder import gaussian_blur
from stargon.model.gon import StarGON, normal_equations
from stargon.model.pseudo_continuum import pseudo_continuum

V_MAX = 1000.0  # km/s, the velocity search range
FINE_HALF_WIDTH, FINE_STEP, FINE_STEPS_PER_FWHM = 15.0, 1.0, 20.0
BASIS_BUDGET = 8_000_000  # floats per velocity chunk in the scan


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
    model: StarGON, batch: PixelBatch, templates: list[torch.Tensor], v_max: float = V_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """χ²/n (M, V) of M template spectra at every velocity within ±v_max that the template
    table resolves, and those velocities (V,), by cross-correlation in ln λ.

    A Doppler shift is a translation in ln λ and an LSF of constant R a fixed kernel there, so
    the templates are blurred once to the spectrum's median R and every shift is one lag of a
    correlation: with the continuum C solved once (v = 0) and a free amplitude per lag,
    χ²(s) = Σ ivar f² − (Σ ivar f C T_s)² / Σ ivar C² T_s², both sums one FFT each.
    The pixels are laid onto the table grid by the adjoint of linear interpolation.
    """
    decoder = model.decoder
    flux, ivar, wave = (x[0].to(torch.float64) for x in (batch.flux, batch.ivar, batch.wave))
    with torch.no_grad():
        reference = model.observation_basis(wave, 0.0, batch.resolving_power[0], templates)[0]
        continuum = solve_continuum(batch.design[0].double(), flux, ivar, reference.double())
    good = ivar > 0
    sigma = float((1.0 / (FWHM_PER_SIGMA * batch.resolving_power[0][good].double())).median())
    level = max(i for i, lv in enumerate(decoder.levels) if lv.sigma <= sigma)
    step = decoder.levels[level].step
    extra = math.sqrt(max(sigma**2 - decoder.levels[level].sigma ** 2, 0.0)) / step
    position = (torch.log(wave[good]) - decoder.ln_min) / step
    cell = position.floor().long()
    frac = position - cell
    first, n_cells = int(cell.min()), int(cell.max() - cell.min()) + 2
    weights = torch.stack([ivar * flux * continuum, ivar * continuum**2])[:, good]
    laid = torch.zeros(2, n_cells, dtype=torch.float64, device=flux.device)
    laid.index_add_(1, cell - first, weights * (1 - frac))
    laid.index_add_(1, cell - first + 1, weights * frac)
    lags = math.ceil(math.log(doppler_factor(v_max)) / step)
    if not isinstance(templates, TemplatePyramid):
        templates = TemplatePyramid(templates)
    size = templates[level].shape[-1]
    index = torch.arange(first - lags, first + n_cells + lags, device=flux.device)
    index = index.clamp(0, size - 1)
    low, high = int(index[0]), int(index[-1]) + 1
    if extra > 0.1:
        table = templates.blurred(level, extra, low, high)
    else:
        table = templates[level][:, low:high].detach().double()
    segment = table[:, index - low]
    length = 1 << (segment.shape[-1] - 1).bit_length()  # a power of two: a fast FFT
    spectra = torch.fft.rfft(torch.stack([segment, segment**2]), n=length)
    kernels = torch.fft.rfft(laid, n=length).conj().unsqueeze(1)
    cross, norm = torch.fft.irfft(spectra * kernels, n=length)[..., : 2 * lags + 1]
    total = (ivar * flux**2).sum()
    chi2 = (total - cross**2 / norm.clamp_min(1e-300)) / batch.n_valid[0].item()
    shifts = lags - np.arange(2 * lags + 1)
    return velocity_of_factor(np.exp(shifts[::-1] * step)), chi2.flip(-1).cpu().numpy()


class TemplatePyramid(list):
    """The decoded templates at every LSF level of the decoder (a list, as `pyramid()` gives),
    which keeps what the velocity scan blurred: a level's blocks of BLOCK samples, per extra
    width. Every spectrum of an instrument needs the same width and nearly the same blocks;
    blurring a whole level at once would cost the first fit of an instrument ~1 s."""

    BLOCK = 8192

    def __init__(self, levels: list[torch.Tensor]):
        super().__init__(levels)
        self._blocks: dict[tuple[int, float, int], torch.Tensor] = {}

    def blurred(self, level: int, sigma_steps: float, start: int, stop: int) -> torch.Tensor:
        """Samples start…stop − 1 of `level` blurred by a Gaussian of `sigma_steps` samples
        (the level's edge values repeated beyond it), in float64."""
        first, last = start // self.BLOCK, (stop - 1) // self.BLOCK
        joined = torch.cat([self._block(level, sigma_steps, b) for b in range(first, last + 1)], -1)
        return joined[:, start - first * self.BLOCK : stop - first * self.BLOCK]

    def _block(self, level: int, sigma_steps: float, block: int) -> torch.Tensor:
        key = (level, sigma_steps, block)
        if key not in self._blocks:
            table = self[level].detach()
            margin = math.ceil(4 * sigma_steps) + 1
            low, high = block * self.BLOCK, min((block + 1) * self.BLOCK, table.shape[-1])
            index = torch.arange(low - margin, high + margin, device=table.device)
            piece = table[:, index.clamp(0, table.shape[-1] - 1)].double()
            self._blocks[key] = gaussian_blur(piece, sigma_steps)[:, margin:-margin]
        return self._blocks[key]


def latent_scan(
    model: StarGON, batch: PixelBatch, pyramid: list[torch.Tensor], z: torch.Tensor, v_grid
) -> np.ndarray:
    """χ²/n (B, V) of each spectrum's own model (latent z held fixed) at each of its
    velocities `v_grid` (B, V).

    The continuum is smooth and hardly changes across a few km/s, so it is solved once, at each
    grid's centre, and each velocity only gets a closed-form amplitude.
    """
    n_spectra, n_pix = batch.flux.shape
    v_grid = np.array(
        np.broadcast_to(np.asarray(v_grid, dtype=float), (n_spectra, np.shape(v_grid)[-1]))
    )
    flux, ivar = batch.flux, batch.ivar
    device = flux.device

    def model_at(v: torch.Tensor) -> torch.Tensor:  # v (B, c) → models (B, c, P)
        columns = v.shape[1]

        def repeat(x: torch.Tensor) -> torch.Tensor:  # (B, …) → (B·c, …)
            return x.repeat_interleave(columns, dim=0)

        basis = model.observation_basis(
            repeat(batch.wave), v.reshape(-1), repeat(batch.resolving_power), pyramid
        )
        return model.observe(repeat(z), basis).reshape(n_spectra, columns, n_pix)

    centre = torch.as_tensor(np.median(v_grid, axis=1), dtype=torch.float64, device=device)
    chunk = max(1, BASIS_BUDGET // ((model.config.n_basis + 1) * n_pix * n_spectra))
    chi2 = []
    with torch.no_grad():
        continuum = solve_continuum(batch.design, flux, ivar, model_at(centre[:, None])[:, 0])
        for start in range(0, v_grid.shape[1], chunk):
            v = torch.as_tensor(
                v_grid[:, start : start + chunk], dtype=torch.float64, device=device
            )
            shape = continuum.unsqueeze(1) * model_at(v)
            weighted = ivar.unsqueeze(1) * shape
            amplitude = (weighted * flux.unsqueeze(1)).sum(-1) / (weighted * shape).sum(
                -1
            ).clamp_min(1e-30)
            residual = (
                ivar.unsqueeze(1) * (flux.unsqueeze(1) - amplitude.unsqueeze(-1) * shape) ** 2
            )
            chi2.append((residual.sum(-1) / batch.n_valid.unsqueeze(1)).cpu().numpy())
    return np.concatenate(chi2, axis=1)


def template_pyramid(model: StarGON, prototypes: torch.Tensor | None = None) -> TemplatePyramid:
    """The pyramid of decoded template spectra for the coarse scan (z = 0 when no prototypes)."""
    z = torch.zeros(1, model.config.latent_dim) if prototypes is None else prototypes
    with torch.no_grad():
        table = model.decoder.templates(z.to(model.decoder.table))
        return TemplatePyramid(model.decoder.pyramid(table))


def find_velocities(model: StarGON, batch: PixelBatch, pyramid=None, templates=None) -> np.ndarray:
    """v (B,) of every spectrum in the batch: a template-bank scan over ±1000 km/s (one FFT
    cross-correlation per spectrum); then each star's own template (its GON latent at that
    velocity, encoded for the whole batch at once) scanned around its best in steps of a
    twentieth of the LSF's FWHM (at least 1 km/s), and a parabola through the minimum."""
    pyramid = model.decoder.pyramid() if pyramid is None else pyramid
    templates = template_pyramid(model) if templates is None else templates
    n_spectra = len(batch.flux)
    best, half_width = np.zeros(n_spectra), np.zeros(n_spectra)
    for i in range(n_spectra):
        v_grid, chi2 = template_scan(model, batch.select([i]), templates)
        best[i] = v_grid[int(np.argmin(chi2.min(axis=0)))]
        half_width[i] = max(FINE_HALF_WIDTH, float(np.diff(v_grid).max()))
    trial = batch.with_velocity(
        torch.as_tensor(best, dtype=batch.flux.dtype, device=batch.flux.device)
    )
    z = model.encode(trial, model.basis(trial, pyramid))
    resolving_power = batch.resolving_power.masked_fill(batch.ivar <= 0, float("nan"))
    fwhm = C_KMS / resolving_power.double().nanmedian(-1).values.cpu().numpy()
    step = np.maximum(FINE_STEP, fwhm / FINE_STEPS_PER_FWHM)
    reach = np.ceil(half_width / step)  # steps each side, per spectrum
    k = np.arange(-reach.max(), reach.max() + 1)
    fine = latent_scan(model, batch, pyramid, z, best[:, None] + k * step[:, None])
    fine[np.abs(k)[None, :] > reach[:, None]] = np.inf  # each spectrum its own window
    velocities = np.empty(n_spectra)
    for b, row in enumerate(fine):
        i = int(np.clip(np.argmin(row), 1, len(row) - 2))
        y0, y1, y2 = row[i - 1 : i + 2]
        curvature = y0 - 2 * y1 + y2
        offset = 0.5 * (y0 - y2) / curvature if np.isfinite(curvature) and curvature > 0 else 0.0
        velocities[b] = best[b] + (k[i] + np.clip(offset, -1, 1)) * step[b]
    return velocities


def find_velocity(model: StarGON, batch: PixelBatch, pyramid=None, templates=None) -> float:
    """v of a batch of one spectrum (`find_velocities`)."""
    return float(find_velocities(model, batch, pyramid, templates)[0])


def fit_spectra(
    model: StarGON,
    spectra: Sequence[Spectrum],
    fit_velocity: bool | None = None,
    refine_steps: int = 20,
    device: str | torch.device = "cpu",
    pyramid: list[torch.Tensor] | None = None,
    templates: list[torch.Tensor] | None = None,
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
    batch = make_batch(spectra).to(device)
    if pyramid is None:
        with torch.no_grad():
            pyramid = model.decoder.pyramid()
    v0 = np.zeros(len(spectra))
    if moving.any():
        rows = np.flatnonzero(moving)
        v0[rows] = find_velocities(model, batch.select(rows), pyramid, templates)
    v = torch.as_tensor(v0, dtype=batch.flux.dtype, device=device)
    moving_mask = torch.as_tensor(moving, device=device)
    z, v, covariance = _refine(model, batch, pyramid, None, v, moving_mask, refine_steps)
    return _results(model, spectra, batch, pyramid, z, v, covariance)


def fit_spectrum(
    model: StarGON,
    spectrum: Spectrum,
    fit_velocity: bool | None = None,
    refine_steps: int = 20,
    device: str | torch.device = "cpu",
    pyramid: list[torch.Tensor] | None = None,
    templates: list[torch.Tensor] | None = None,
) -> FitResult:
    """`fit_spectra` of one spectrum."""
    return fit_spectra(model, [spectrum], fit_velocity, refine_steps, device, pyramid, templates)[0]


def _refine(model, batch, pyramid, z, v, moving, steps, rounds: int = 2):
    """Joint MAP (z, v) by damped Gauss–Newton. The basis is linear in v over the sub-km/s
    steps left after the scan, so it is linearised around the current v (one forward-mode
    derivative) and re-linearised once, instead of being re-read from the table each step.
    Spectra with v held go through the rounds too (their steps simply continue), so that a
    spectrum gets the same steps whatever its batch holds: rest-frame MILES and STELIB stars
    were still 1–4 σ_z from their optimum after one round of 20 steps. Without a z, the first
    round starts from the encoder's step on its own basis."""
    for _ in range(rounds):
        z, v, covariance = _refine_linearised(model, batch, pyramid, z, v.detach(), moving, steps)
    return z, v, covariance


@dataclass
class _Linearised:
    """Spectra with their basis linearised in v around v0 (no slope when no v is fitted) and
    the prior's precision per parameter; `rows` takes some of them, for the ones still moving."""

    batch: PixelBatch
    basis0: torch.Tensor  # (K+1, B, P)
    slope: torch.Tensor | None  # ∂basis/∂v, (K+1, B, P)
    v0: torch.Tensor
    penalty: torch.Tensor  # (B, D [+1])

    def rows(self, index: torch.Tensor) -> _Linearised:
        slope = None if self.slope is None else self.slope[:, index]
        return _Linearised(self.batch.select(index), self.basis0[:, index], slope,
                           self.v0[index], self.penalty[index])  # fmt: skip

    def basis(self, v: torch.Tensor) -> torch.Tensor:
        if self.slope is None:
            return self.basis0
        return self.basis0 + (v - self.v0).to(self.basis0.dtype)[:, None] * self.slope

    def posterior(self, model: StarGON, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """−2 ln posterior per spectrum: χ² + zᵀΛz."""
        with torch.no_grad():
            batch = self.batch.with_velocity(v)
            return model.chi2(z, self.basis(v), batch) * batch.n_valid + model.prior_term(z)

    def normal_equations(self, model: StarGON, z: torch.Tensor, v: torch.Tensor):
        return _normal_equations(model, self.batch, z, v, self.basis(v), self.slope, self.penalty)


def _refine_linearised(model, batch, pyramid, z, v0, moving, steps, tolerance=1e-2):
    """Gauss–Newton on −2 ln posterior = χ² + zᵀΛz over (z, v) with the continuum re-solved at
    every step; a step that does not lower it is halved (up to 8 times). Each spectrum stops
    on its own (no gain, or a step that halving cannot save) and is left out of the later
    steps. Returns z, v and the Laplace covariance of z (the z block of the joint inverse: v's
    uncertainty included). Spectra whose v is held (`moving` false) get a zero v column and a
    unit v prior: their v stays put."""

    def basis_at(velocity):
        return model.basis(batch.with_velocity(velocity), pyramid)

    fit_velocity = bool(moving.any())
    with torch.no_grad():
        if fit_velocity:
            basis0, slope = jvp(basis_at, (v0,), (moving.to(v0.dtype),))
        else:
            basis0, slope = basis_at(v0), None
    if z is None:
        z = model.encode(batch.with_velocity(v0), basis0)
    dim = z.shape[-1]
    penalty = torch.full(
        (len(z), dim + int(fit_velocity)),
        model.config.prior_precision,
        dtype=basis0.dtype,
        device=basis0.device,
    )
    if fit_velocity:
        penalty[:, -1] = (~moving).to(penalty.dtype)  # v has no prior; a held v stays put
    linearised = _Linearised(batch, basis0, slope, v0, penalty)
    z, v = z.detach().clone(), v0.clone()
    current = linearised.posterior(model, z, v)
    active = torch.ones(len(z), dtype=torch.bool, device=z.device)
    for _ in range(steps):
        rows = torch.nonzero(active).squeeze(-1)
        part = linearised.rows(rows)
        new_z, new_v, new_posterior, accepted = _damped_step(
            model, part, z[rows], v[rows], current[rows], dim, fit_velocity
        )
        gain = current[rows] - new_posterior
        z[rows], v[rows], current[rows] = new_z, new_v, new_posterior
        active[rows] = accepted & (gain >= tolerance)  # unsaved or converged: it stops
        if not bool(active.any()):
            break
    normal, _ = linearised.normal_equations(model, z, v)
    covariance = torch.linalg.inv(normal.double())[:, :dim, :dim]
    return z, v, covariance


def _damped_step(model, part: _Linearised, z, v, current, dim: int, fit_velocity: bool):
    """One Gauss–Newton step for each spectrum of `part`, halved until it lowers that
    spectrum's posterior (8 halvings at most): (z, v, posterior, accepted) per spectrum."""
    normal, rhs = part.normal_equations(model, z, v)
    step = torch.linalg.solve(normal, rhs.unsqueeze(-1)).squeeze(-1)
    accepted = torch.zeros(len(z), dtype=torch.bool, device=z.device)
    new_z, new_v, new_posterior = z.clone(), v.clone(), current.clone()
    for _ in range(8):
        trial_z = z + step[:, :dim]
        trial_v = v + step[:, dim] if fit_velocity else v
        trial = part.posterior(model, trial_z, trial_v)
        better = (trial <= current) & ~accepted
        new_z[better], new_v[better], new_posterior[better] = (
            trial_z[better], trial_v[better], trial[better]
        )  # fmt: skip
        accepted |= better
        if bool(accepted.all()):
            break
        step = torch.where(accepted[:, None], step, step / 2)
    return new_z, new_v, new_posterior, accepted


def _normal_equations(model, batch, z, v, basis, slope, penalty):
    """JᵀWJ + Λ and JᵀW r − Λθ for θ = (z, [v]), the continuum held at its solution."""
    with torch.enable_grad():
        flux, continuum, jacobian = model.linearise(z, basis, batch)
    if slope is not None:  # ∂m/∂v through the linearised basis: C (S₀ + h(z)·S)
        with torch.no_grad():
            weights = model.decoder.h(z)
            dfdv = slope[0] + torch.einsum("bk,kbp->bp", weights, slope[1:])
        jacobian = torch.cat([jacobian, (continuum * dfdv).unsqueeze(-1)], dim=-1)
        theta = torch.cat([z, v.to(z.dtype).unsqueeze(-1)], dim=-1)
    else:
        theta = z
    return normal_equations(
        jacobian.detach(), batch.ivar, (batch.flux - flux).detach(), penalty, theta
    )


def _results(model, spectra, batch, pyramid, z, v, covariance) -> list[FitResult]:
    z, v = z.detach(), v.detach()

    def model_at(velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trial = batch.with_velocity(velocity)
        return model.model_flux(z, model.basis(trial, pyramid), trial)

    with torch.no_grad():  # the model and, by forward mode, its slope in v: one pass
        (full, normalised), (dm_dv, _) = jvp(model_at, (v,), (torch.ones_like(v),))
    information = (batch.ivar * dm_dv.detach() ** 2).sum(-1).cpu().numpy()
    n_valid = (batch.ivar > 0).sum(-1).cpu().numpy()
    chi2 = (batch.ivar * (batch.flux - full) ** 2).sum(-1).cpu().numpy()
    continuum = (full / normalised.where(normalised != 0, torch.ones_like(normalised))).cpu()
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
