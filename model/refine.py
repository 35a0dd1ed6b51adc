"""The MAP fit of one batch of spectra at their scanned velocities: (z, v) jointly by damped
Gauss–Newton with the continuum's coefficients free, under the model's latent prior N(0, Λ⁻¹)
— never unbounded maximum likelihood, where poorly constrained latents run away. The latent
covariance is the Laplace one at the optimum, the continuum and v marginalised. The velocity's
photon-noise limit σ_v = 1/sqrt(Σ ivar (∂m/∂v)²) comes from the model itself (∂m/∂v =
−(λ ∂m/∂λ)/c, the basis's slope in v).

Not to be confused with `StarGON.gauss_newton`, the training's single step at a known v with
the continuum held: here v moves too, the continuum is free, and each spectrum iterates to its
own convergence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from stargon.model.batch import PixelBatch
from stargon.model.continuum import solve_continuum
from stargon.model.fit_config import FitConfig
from stargon.model.gon import StarGON, with_prior
from stargon.model.pseudo_continuum import pseudo_continuum
from stargon.model.velocity import lsf_fwhm_kms


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


def refine(model, batch, pyramid, v, moving, config: FitConfig):
    """Joint MAP (z, v) by damped Gauss–Newton, from the encoder's step at the scan's v.

    The basis is linear in v over the sub-km/s steps left after the scan, so it is linearised
    around v (its slope read with it) instead of being re-read from the table each step;
    a spectrum whose v moved by more than `relinearise` × its LSF's FWHM is linearised again
    at its new v and refined once more (`max_rounds` in all). Spectra with v held keep a zero v
    column. Returns z, v, the Laplace covariance of z and the final linearisation."""
    linearised = _linearise(model, batch, pyramid, v, moving, config)
    z = model.encode(batch.with_velocity(v), linearised.basis0)
    fwhm = torch.as_tensor(lsf_fwhm_kms(batch), dtype=v.dtype, device=v.device)
    rows = torch.arange(len(v), device=v.device)
    for round_ in range(config.max_rounds):
        part = linearised.rows(rows)
        z[rows], v[rows] = _descend(model, part, z[rows], v[rows], config)
        moved = moving[rows] & ((v[rows] - part.v0).abs() > config.relinearise * fwhm[rows])
        rows = rows[moved]
        if not len(rows) or round_ == config.max_rounds - 1:
            break
        again = _linearise(model, batch.select(rows), pyramid, v[rows], True, config)
        linearised.replace(rows, again)
    normal, _ = linearised.system(model, z, v)
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
    ridge: float  # FitConfig.continuum_ridge

    def rows(self, index: torch.Tensor) -> _Linearised:
        if len(index) == len(self.v0):  # all of them, in order: no copy
            return self
        return _Linearised(self.batch.select(index), self.basis0[:, index], self.slope[:, index],
                           self.v0[index], self.penalty[index], self.moving[index],
                           self.ridge)  # fmt: skip

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

    def system(self, model: StarGON, z: torch.Tensor, v: torch.Tensor):
        """The Gauss–Newton system of (z, v) with the continuum free (`_reduced_system`)."""
        return _reduced_system(model, self, z, v)


def _linearise(model, batch, pyramid, v, moving, config: FitConfig) -> _Linearised:
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
    return _Linearised(batch, basis0, slope, v.clone(), penalty, moving, config.continuum_ridge)


def _descend(model, linearised: _Linearised, z, v, config: FitConfig):
    """Gauss–Newton on −2 ln posterior = χ² + zᵀΛz over (z, v) with the continuum re-solved at
    every step; a step that does not lower it is halved (up to 8 times). Each spectrum stops
    on its own — when its step promises less than its tolerance, gains less, or cannot be
    saved by halving — and is left out of the later steps, so its result does not depend on
    its batch-mates. The tolerance, `gain_tolerance` of χ² (a tenth of σ), grows with χ² where
    float32 sums of many pixels are noisier than that (~2×10⁻⁷ χ²)."""
    z, v = z.detach().clone(), v.detach().clone()
    current = linearised.posterior(model, z, v)
    tolerance = (config.relative_gain_tolerance * current).clamp_min(config.gain_tolerance)
    active = torch.ones(len(z), dtype=torch.bool, device=z.device)
    for _ in range(config.refine_steps):
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
    normal, rhs = part.system(model, z, v)
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


def _reduced_system(model, linearised: _Linearised, z, v):
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
    ridge = linearised.ridge * size.sum(-1) / (size > 0).sum(-1).clamp_min(1)
    eye = torch.eye(columns.shape[-1], dtype=columns.dtype, device=columns.device)
    stacked = torch.cat([columns, ridge.sqrt()[:, None, None] * eye], dim=1)
    q = torch.linalg.qr(stacked).Q[:, : columns.shape[1]]
    projected = torch.baddbmm(jacobian, q, q.transpose(1, 2) @ jacobian, alpha=-1)
    held_at = (v - linearised.v0).to(z.dtype).unsqueeze(-1)  # a held v is pulled back to v0
    theta = torch.cat([z, held_at], dim=-1).double()
    normal = (projected.transpose(1, 2) @ projected).double()
    gradient = (projected * residual).sum(1).double()
    return with_prior(normal, gradient, linearised.penalty, theta)


def results(model, spectra, linearised: _Linearised, z, v, covariance) -> list[FitResult]:
    """Per-spectrum results. The model is drawn from the final linearisation: v is within
    `relinearise` × FWHM of where the basis was linearised, so it differs from the basis read
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
