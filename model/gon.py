"""The Gradient Origin Network: latents are one step from the origin z₀ = 0 on a per-spectrum loss.

The default step is the linearised MAP (Gauss–Newton) step of χ² + zᵀΛz,

    z = z₀ + (JᵀWJ + Λ)⁻¹ (JᵀW r − Λ z₀),   J = ∂(C·f)/∂z,  r = flux − C·f,  W = ivar,

with the continuum C solved at z₀ and held. Its size is set by the model, not by the errors:
scaling a spectrum's ivar leaves z unchanged where the data dominate the prior N(0, Λ⁻¹), and
shrinks z toward the prior where the data are poor. A plain gradient step, kept for comparison
("gradient"), is linear in ivar: the same star at twice the S/N gets four times the latent.
Each spectrum's step uses only its own pixels, so z never depends on the batch it is encoded in.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stargon.model.batch import PixelBatch
from stargon.model.continuum import solve_continuum
from stargon.model.decoder import BasisDecoder, ModelConfig
from stargon.model.pyramid import LsfPyramid

INNER_STEPS = ("gauss_newton", "gradient", "normalised_gradient")


class StarGON(nn.Module):
    """Decoder + GON inner step. `loss(batch)` trains it; `encode(batch)` gives latents."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.inner_step not in INNER_STEPS:
            raise ValueError(f"inner_step must be one of {INNER_STEPS}, got {config.inner_step!r}")
        if config.lsf_mixing not in ("fwhm", "variance"):
            raise ValueError(f"lsf_mixing must be fwhm or variance, got {config.lsf_mixing!r}")
        self.config = config
        self.decoder = BasisDecoder(config)
        if config.inner_step != "gauss_newton":  # the gradient variants' learnt step size
            self.log_step = nn.Parameter(torch.tensor(0.0))

    def observation_basis(
        self,
        wave: torch.Tensor,
        v_kms: torch.Tensor | float = 0.0,
        resolving_power: torch.Tensor | float = math.inf,
        pyramid: LsfPyramid | None = None,
    ) -> torch.Tensor:
        """The forward model's linear part, (K+1, *wave.shape): the decoder's rest-frame
        functions seen at observed vacuum λ from a star moving at v (`core.physics`'s Doppler
        factor) through an LSF of resolving power R (the decoder's pyramid). Cache it per
        instrument and velocity; `observe` then costs one small MLP and one matrix product."""
        return self.decoder.pixel_basis(wave, v_kms, resolving_power, pyramid)

    def observe(self, z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        """Continuum-normalised observed spectra (B, P) of latents z (B, D): the one path from
        latents to an observation (training, fitting, sampling, explorer, evaluation)."""
        return self.decoder.decode(z, basis)

    def basis(self, batch: PixelBatch, pyramid: LsfPyramid | None = None):
        return self.observation_basis(batch.wave, batch.v_kms, batch.resolving_power, pyramid)

    def model_flux(self, z: torch.Tensor, basis: torch.Tensor, batch: PixelBatch):
        """(continuum × normalised model, normalised model) at the batch's pixels."""
        normalised = self.observe(z, basis)
        continuum = solve_continuum(batch.design, batch.flux, batch.ivar, normalised)
        return continuum * normalised, normalised

    def chi2(self, z: torch.Tensor, basis: torch.Tensor, batch: PixelBatch) -> torch.Tensor:
        """χ² per spectrum divided by its number of valid pixels, shape (B,)."""
        model, _ = self.model_flux(z, basis, batch)
        return (batch.ivar * (batch.flux - model) ** 2).sum(-1) / batch.n_valid

    def prior_term(self, z: torch.Tensor, precision: float | None = None) -> torch.Tensor:
        """zᵀΛz per spectrum (Λ = precision · I): the latent prior's −2 ln p."""
        precision = self.config.prior_precision if precision is None else precision
        return precision * (z**2).sum(-1)

    def encode(
        self,
        batch: PixelBatch,
        basis: torch.Tensor | None = None,
        n_steps: int = 1,
        create_graph: bool = False,
        prior_precision: float | None = None,
    ) -> torch.Tensor:
        """GON latents; gradients are needed even at inference, so they are switched on here.
        `prior_precision` overrides the model's Λ (0 switches the prior off)."""
        basis = self.basis(batch) if basis is None else basis
        precision = self.config.prior_precision if prior_precision is None else prior_precision
        z = torch.zeros(
            batch.flux.shape[0], self.config.latent_dim, dtype=basis.dtype, device=basis.device
        )
        # The Gauss–Newton step is closed form: a graph only when training differentiates
        # through it. The gradient steps need z's gradient even at inference.
        gradient_step = self.config.inner_step != "gauss_newton"
        with torch.set_grad_enabled(create_graph or gradient_step):
            for _ in range(n_steps):
                if gradient_step:
                    z = self._gradient_step(z, basis, batch, create_graph)
                else:
                    step, _ = self.gauss_newton(z, basis, batch, precision)
                    z = z + step
        return z if create_graph else z.detach()

    def gauss_newton(
        self, z: torch.Tensor, basis: torch.Tensor, batch: PixelBatch, precision: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(MAP step from z, the normal matrix JᵀWJ + Λ): its inverse is the latent covariance."""
        model, _, jacobian = self.linearise(z, basis, batch)
        penalty = torch.full_like(z, precision)
        normal, rhs = normal_equations(jacobian, batch.ivar, batch.flux - model, penalty, z)
        return torch.linalg.solve(normal, rhs.unsqueeze(-1)).squeeze(-1), normal

    def linearise(
        self, z: torch.Tensor, basis: torch.Tensor, batch: PixelBatch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(model C·f, continuum C, J = C ∂f/∂z of shape (B, P, D)) at z, C solved there."""
        normalised, dfdz = self.decoder.decode_with_jacobian(z, basis)
        continuum = solve_continuum(batch.design, batch.flux, batch.ivar, normalised)
        return continuum * normalised, continuum, continuum.unsqueeze(-1) * dfdz

    def _gradient_step(self, z, basis, batch, create_graph):
        """−α∇χ²/n ("gradient", the first default model's step) or −α∇χ²/Σivar."""
        z = z if z.requires_grad else z.requires_grad_(True)
        loss = self.chi2(z, basis, batch)
        if self.config.inner_step == "normalised_gradient":
            loss = loss * batch.n_valid / batch.ivar.sum(-1).clamp_min(1e-30)
        (grad,) = torch.autograd.grad(loss.sum(), z, create_graph=create_graph)
        return z - self.log_step.exp() * grad

    def forward(self, batch: PixelBatch, n_steps: int = 1, smoothness=None):
        """The training loss (what DistributedDataParallel wraps): `loss`, plus
        `weight · decoder.roughness(z, wave, R)` when `smoothness` = (wave, R, weight). The
        batch's pixels and the roughness cells are read from the pyramid together."""
        decoder = self.decoder
        reads = [(decoder.rest_frame(batch.wave, batch.v_kms), batch.resolving_power)]
        if smoothness is not None:
            reads += decoder.roughness_reads(*smoothness[:2])
        basis, *cells = decoder.read_together(decoder.pyramid(), reads)
        loss, chi2, z = self.loss(batch, n_steps, basis=basis)
        if smoothness is None:
            return loss, chi2, z, torch.zeros((), device=loss.device)
        roughness = decoder.roughness_of(z, *cells)
        return loss + smoothness[2] * roughness, chi2, z, roughness.detach()

    def loss(
        self,
        batch: PixelBatch,
        n_steps: int = 1,
        pyramid: LsfPyramid | None = None,
        basis: torch.Tensor | None = None,
    ):
        """Mean over the batch of the per-spectrum χ²/n after the GON step(s)."""
        basis = self.basis(batch, pyramid) if basis is None else basis
        z = self.encode(batch, basis, n_steps=n_steps, create_graph=True)
        chi2 = self.chi2(z, basis, batch)
        return chi2.mean(), chi2.detach(), z.detach()


def normal_equations(
    jacobian: torch.Tensor,
    ivar: torch.Tensor,
    residual: torch.Tensor,
    penalty: torch.Tensor,
    theta: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Newton system of χ² + Σ penalty·θ² at θ: (JᵀWJ + diag(penalty), JᵀW r − penalty·θ).

    A ridge relative to the data's own scale keeps a parameter the data cannot see solvable
    without the prior, and leaves the step unchanged when ivar is scaled."""
    weighted = jacobian * ivar.unsqueeze(-1)  # (B, P, N)
    normal = weighted.transpose(1, 2) @ jacobian
    return with_prior(normal, (weighted * residual.unsqueeze(-1)).sum(1), penalty, theta)


def with_prior(
    normal: torch.Tensor, gradient: torch.Tensor, penalty: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(JᵀWJ + diag(penalty) + ridge, JᵀW r − penalty·θ) from the data's JᵀWJ and JᵀW r."""
    scale = normal.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
    eye = torch.eye(normal.shape[-1], dtype=normal.dtype, device=normal.device)
    normal = normal + torch.diag_embed(penalty.expand_as(theta)) + 1e-9 * scale[:, None, None] * eye
    return normal, gradient - penalty * theta
