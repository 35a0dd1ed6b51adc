"""The Gradient Origin Network: z = −α ∇_{z₀} χ²(x, model(z₀)) at z₀ = 0.

The likelihood is per spectrum: χ² over its valid pixels divided by their number, with the
continuum solved in closed form. Summing per-spectrum terms before the gradient gives each
spectrum exactly its own gradient, so z never depends on the batch it was encoded in.
"""

from __future__ import annotations

import torch
from torch import nn

from stargon.model.batch import PixelBatch
from stargon.model.decoder import BasisDecoder, ModelConfig
from stargon.model.physics import solve_continuum


class StarGON(nn.Module):
    """Decoder + GON step size. `loss(batch)` trains it; `encode(batch)` gives latents."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.decoder = BasisDecoder(config)
        self.log_step = nn.Parameter(torch.tensor(0.0))

    def basis(self, batch: PixelBatch, pyramid: list[torch.Tensor] | None = None):
        return self.decoder.pixel_basis(
            batch.wave, batch.v_kms, batch.resolving_power, pyramid=pyramid
        )

    def model_flux(self, z: torch.Tensor, basis: torch.Tensor, batch: PixelBatch):
        """(continuum × normalised model, normalised model) at the batch's pixels."""
        normalised = self.decoder.decode(z, basis)
        continuum = solve_continuum(batch.design, batch.flux, batch.ivar, normalised)
        return continuum * normalised, normalised

    def chi2(self, z: torch.Tensor, basis: torch.Tensor, batch: PixelBatch) -> torch.Tensor:
        """χ² per spectrum divided by its number of valid pixels, shape (B,)."""
        model, _ = self.model_flux(z, basis, batch)
        return (batch.ivar * (batch.flux - model) ** 2).sum(-1) / batch.n_valid

    def encode(
        self,
        batch: PixelBatch,
        basis: torch.Tensor | None = None,
        n_steps: int = 1,
        create_graph: bool = False,
    ) -> torch.Tensor:
        """GON latents; gradients are needed even at inference, so they are switched on here."""
        basis = self.basis(batch) if basis is None else basis
        z = torch.zeros(
            batch.flux.shape[0], self.config.latent_dim, dtype=basis.dtype, device=basis.device
        )
        with torch.enable_grad():
            for _ in range(n_steps):
                z = z if z.requires_grad else z.requires_grad_(True)
                (grad,) = torch.autograd.grad(
                    self.chi2(z, basis, batch).sum(), z, create_graph=create_graph
                )
                z = z - self.log_step.exp() * grad
        return z if create_graph else z.detach()

    def forward(self, batch: PixelBatch, n_steps: int = 1):
        """The training loss (what DistributedDataParallel wraps)."""
        return self.loss(batch, n_steps)

    def loss(self, batch: PixelBatch, n_steps: int = 1):
        """Mean over the batch of the per-spectrum χ²/n after the GON step(s)."""
        basis = self.basis(batch)
        z = self.encode(batch, basis, n_steps=n_steps, create_graph=True)
        chi2 = self.chi2(z, basis, batch)
        return chi2.mean(), chi2.detach(), z.detach()
