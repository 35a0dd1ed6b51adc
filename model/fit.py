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
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import jvp

from stargon.core.physics import FWHM_PER_SIGMA, doppler_factor, velocity_of_factor
from stargon.core.spectrum import Spectrum
from stargon.model.batch import PixelBatch, make_batch
from stargon.model.continuum import solve_continuum
from stargon.model.decoder import gaussian_blur
from stargon.model.gon import StarGON, normal_equations
from stargon.model.pseudo_continuum import pseudo_continuum

V_MAX = 1000.0  # km/s, the velocity search range
FINE_HALF_WIDTH, FINE_STEP = 15.0, 1.0
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
    margin = math.ceil(4 * extra) + 1
    position = (torch.log(wave[good]) - decoder.ln_min) / step
    cell = position.floor().long()
    frac = position - cell
    first, n_cells = int(cell.min()), int(cell.max() - cell.min()) + 2
    weights = torch.stack([ivar * flux * continuum, ivar * continuum**2])[:, good]
    laid = torch.zeros(2, n_cells, dtype=torch.float64)
    laid.index_add_(1, cell - first, weights * (1 - frac))
    laid.index_add_(1, cell - first + 1, weights * frac)
    lags = math.ceil(math.log(doppler_factor(v_max)) / step)
    table = templates[level]
    index = torch.arange(first - lags - margin, first + n_cells + lags + margin)
    segment = table[:, index.clamp(0, table.shape[-1] - 1)].detach().to(torch.float64)
    if extra > 0.1:
        segment = gaussian_blur(segment, extra)
    segment = segment[:, margin:-margin]
    length = 1 << (segment.shape[-1] - 1).bit_length()  # a power of two: a fast FFT
    spectra = torch.fft.rfft(torch.stack([segment, segment**2]), n=length)
    kernels = torch.fft.rfft(laid, n=length).conj().unsqueeze(1)
    cross, norm = torch.fft.irfft(spectra * kernels, n=length)[..., : 2 * lags + 1]
    total = (ivar * flux**2).sum()
    chi2 = (total - cross**2 / norm.clamp_min(1e-300)) / batch.n_valid[0].item()
    shifts = lags - np.arange(2 * lags + 1)
    return velocity_of_factor(np.exp(shifts[::-1] * step)), chi2.flip(-1).numpy()


def latent_scan(
    model: StarGON, batch: PixelBatch, pyramid: list[torch.Tensor], z: torch.Tensor, v_grid
) -> np.ndarray:
    """χ²/n (V,) of the spectrum's own model (latent z held fixed) at each velocity.

    The continuum is smooth and hardly changes across a few km/s, so it is solved once, at the
    grid's centre, and each velocity only gets a closed-form amplitude.
    """
    n_pix = batch.flux.shape[-1]
    flux, ivar = batch.flux[0], batch.ivar[0]

    def model_at(v: torch.Tensor) -> torch.Tensor:
        basis = model.observation_basis(
            batch.wave[0].expand(len(v), n_pix), v, batch.resolving_power[0], pyramid
        )
        return model.observe(z.expand(len(v), -1), basis)  # (V, P)

    centre = torch.tensor([float(np.median(v_grid))], dtype=torch.float64)
    chunk = max(1, BASIS_BUDGET // ((model.config.n_basis + 1) * n_pix))
    chi2 = []
    with torch.no_grad():
        continuum = solve_continuum(batch.design[0], flux, ivar, model_at(centre)[0])
        for start in range(0, len(v_grid), chunk):
            v = torch.as_tensor(v_grid[start : start + chunk], dtype=torch.float64)
            shape = continuum * model_at(v)
            amplitude = (ivar * flux * shape).sum(-1) / (ivar * shape**2).sum(-1).clamp_min(1e-30)
            residual = ivar * (flux - amplitude.unsqueeze(-1) * shape) ** 2
            chi2.append((residual.sum(-1) / batch.n_valid[0]).cpu().numpy())
    return np.concatenate(chi2)


def template_pyramid(model: StarGON, prototypes: torch.Tensor | None = None):
    """The pyramid of decoded template spectra for the coarse scan (z = 0 when no prototypes)."""
    z = torch.zeros(1, model.config.latent_dim) if prototypes is None else prototypes
    with torch.no_grad():
        return model.decoder.pyramid(model.decoder.templates(z.to(model.decoder.table)))


def find_velocity(model: StarGON, batch: PixelBatch, pyramid=None, templates=None) -> float:
    """Template-bank scan over ±1000 km/s; then the star's own template (its GON latent at
    that velocity) scanned at 1 km/s around the best, and a parabola through the minimum."""
    pyramid = model.decoder.pyramid() if pyramid is None else pyramid
    templates = template_pyramid(model) if templates is None else templates
    v_grid, chi2 = template_scan(model, batch, templates)
    best = float(v_grid[int(np.argmin(chi2.min(axis=0)))])
    trial = batch.with_velocity(torch.tensor([best], dtype=batch.flux.dtype))
    z = model.encode(trial, model.basis(trial, pyramid))
    half_width = max(FINE_HALF_WIDTH, float(np.diff(v_grid).max()))
    fine_grid = best + np.arange(-half_width, half_width + 1e-9, FINE_STEP)
    fine = latent_scan(model, batch, pyramid, z, fine_grid)
    i = int(np.clip(np.argmin(fine), 1, len(fine) - 2))
    y0, y1, y2 = fine[i - 1 : i + 2]
    curvature = y0 - 2 * y1 + y2
    offset = 0.5 * (y0 - y2) / curvature if curvature > 0 else 0.0
    return float(fine_grid[i] + np.clip(offset, -1, 1) * FINE_STEP)


def fit_spectrum(
    model: StarGON,
    spectrum: Spectrum,
    fit_velocity: bool | None = None,
    refine_steps: int = 20,
    device: str | torch.device = "cpu",
    pyramid: list[torch.Tensor] | None = None,
    templates: list[torch.Tensor] | None = None,
) -> FitResult:
    """Best (v, z, continuum) for one spectrum. Rest-frame spectra keep v = 0 unless asked.

    Pass `pyramid` and `templates` (from `model.decoder.pyramid()` and `template_pyramid`) when
    fitting many spectra with one model: they do not depend on the spectrum.
    """
    fit_velocity = spectrum.frame == "observed" if fit_velocity is None else fit_velocity
    batch = make_batch([spectrum]).to(device)
    if pyramid is None:
        with torch.no_grad():
            pyramid = model.decoder.pyramid()
    v0 = find_velocity(model, batch, pyramid, templates) if fit_velocity else 0.0
    z = model.encode(batch.with_velocity(torch.tensor([v0], dtype=batch.flux.dtype)))
    v = torch.tensor([v0], dtype=batch.flux.dtype, device=device)
    z, v, covariance = _refine(model, batch, pyramid, z, v, fit_velocity, refine_steps)
    return _result(model, spectrum, batch, pyramid, z, v, covariance)


def _refine(model, batch, pyramid, z, v, fit_velocity, steps, rounds: int = 2):
    """Joint MAP (z, v) by damped Gauss–Newton. The basis is linear in v over the sub-km/s
    steps left after the scan, so it is linearised around the current v (one forward-mode
    derivative) and re-linearised once, instead of being re-read from the table each step."""
    for _ in range(rounds if fit_velocity else 1):
        z, v, covariance = _refine_linearised(
            model, batch, pyramid, z, v.detach(), fit_velocity, steps
        )
    return z, v, covariance


def _refine_linearised(model, batch, pyramid, z, v0, fit_velocity, steps, tolerance=1e-4):
    """Gauss–Newton on −2 ln posterior = χ² + zᵀΛz over (z, v) with the continuum re-solved at
    every step; a step that does not lower it is halved (up to 8 times). Returns z, v and the
    Laplace covariance of z (the z block of the joint inverse: v's uncertainty included)."""

    def basis_at(velocity):
        return model.basis(batch.with_velocity(velocity), pyramid)

    with torch.no_grad():
        if fit_velocity:
            basis0, slope = jvp(basis_at, (v0,), (torch.ones_like(v0),))
        else:
            basis0, slope = basis_at(v0), None
    precision = model.config.prior_precision
    dim = z.shape[-1]
    penalty = torch.full(
        (dim + int(fit_velocity),), precision, dtype=basis0.dtype, device=basis0.device
    )
    if fit_velocity:
        penalty[-1] = 0.0  # v has no prior

    def basis_of(v):
        return basis0 if slope is None else basis0 + (v - v0).to(basis0.dtype) * slope

    def posterior(z, v):
        with torch.no_grad():
            chi2 = model.chi2(z, basis_of(v), batch.with_velocity(v)) * batch.n_valid
            return float((chi2 + model.prior_term(z)).sum())

    z, v = z.detach(), v0.clone()
    current = posterior(z, v)
    for _ in range(steps):
        normal, rhs = _normal_equations(model, batch, z, v, basis_of(v), slope, penalty)
        step = torch.linalg.solve(normal, rhs.unsqueeze(-1)).squeeze(-1)
        for _ in range(8):
            trial_z = z + step[:, :dim]
            trial_v = v + step[:, dim] if fit_velocity else v
            trial = posterior(trial_z, trial_v)
            if trial <= current:
                break
            step = step / 2
        else:
            break
        z, v = trial_z, trial_v
        gain, current = current - trial, trial
        if gain < tolerance:
            break
    normal, _ = _normal_equations(model, batch, z, v, basis_of(v), slope, penalty)
    covariance = torch.linalg.inv(normal.double())[:, :dim, :dim]
    return z, v, covariance


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


def _result(model, spectrum, batch, pyramid, z, v, covariance) -> FitResult:
    def model_at(velocity: torch.Tensor) -> torch.Tensor:
        trial = batch.with_velocity(velocity)
        return model.model_flux(z, model.basis(trial, pyramid), trial)[0]

    with torch.no_grad():
        trial = batch.with_velocity(v)
        full, normalised = model.model_flux(z, model.basis(trial, pyramid), trial)
    _, dm_dv = jvp(model_at, (v,), (torch.ones_like(v),))
    information = (batch.ivar * dm_dv**2).sum().item()
    n_pix = int((batch.ivar > 0).sum())
    chi2 = (batch.ivar * (batch.flux - full) ** 2).sum()
    scale = batch.scale[0].item()
    continuum = (full / normalised.where(normalised != 0, torch.ones_like(normalised)))[0]
    valid = spectrum.valid
    wave = spectrum.wave[valid]
    normalised_model = normalised[0, : wave.size].cpu().numpy()
    level = pseudo_continuum(wave, normalised_model)  # so that the normalised model sits at 1
    return FitResult(
        v_kms=float(v.item()),
        v_err_kms=float(1.0 / np.sqrt(information)) if information > 0 else float("inf"),
        z=z[0].cpu().numpy(),
        z_cov=covariance[0].cpu().numpy(),
        chi2_dof=float(chi2.item() / max(n_pix - z.shape[1] - 1, 1)),
        n_pix=n_pix,
        wave=wave,
        model_flux=full[0, : wave.size].cpu().numpy() * scale,
        continuum=continuum[: wave.size].cpu().numpy() * scale * level,
        normalised_model=normalised_model / level,
    )
