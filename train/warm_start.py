"""Start a run from a trained model's weights (`stargon train --init-from`): to fine-tune it, or
to grow it. A model with more basis functions keeps the old model's functions and weights; its
new functions start with zero weight in every spectrum, so the run starts from exactly the old
model's spectra and the new functions are learned from there.

Where the new functions start matters: learned from random rows, 32 new functions lowered the
Payne spectra's span floor by 8 % in 2,000 steps, while 16 principal components of the
residuals lower it by 32 % at once (`benchmarks/span_growth.py`). So, given training spectra,
they start as the directions in which those spectra's χ² falls fastest (`residual_functions`):
grown so, the fifth release's held-out χ²/n was below the zero start's at 6 of the 8 points
compared (benchmarks/README.md, "Growing from the residuals").
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from stargon.model.batch import PixelBatch
from stargon.model.checkpoint import load_checkpoint
from stargon.model.continuum import solve_continuum
from stargon.model.gon import StarGON

GROWABLE = ("n_basis",)


def warm_start(
    model: StarGON, source: str | Path, residual_batches: Iterable[PixelBatch] | None = None
) -> None:
    """Copy the weights of the checkpoint or released model at `source` into `model`, in place.
    When `model` has more basis functions, the new ones start from the residuals of
    `residual_batches` (`residual_functions`), or as they are (small random rows) without."""
    trained, _, _ = load_checkpoint(source, model.decoder.table.device)
    new, old = model.config.to_dict(), trained.config.to_dict()
    differ = sorted(k for k in new if k not in GROWABLE and new[k] != old[k])
    if differ:
        settings = ", ".join(f"{k} = {old[k]!r}, not {new[k]!r}" for k in differ)
        raise ValueError(f"{source}: a model with other settings ({settings})")
    if new["n_basis"] < old["n_basis"]:
        raise ValueError(
            f"{source}: {old['n_basis']} basis functions, more than this run's {new['n_basis']}"
        )
    weights = model.state_dict()
    last = f"decoder.h.net.{len(model.decoder.h.net) - 1}."  # the layer giving each weight
    with torch.no_grad():
        for name, value in trained.state_dict().items():
            slot = weights[name]
            slot[: len(value)].copy_(value)
            if name.startswith(last):
                slot[len(value) :].zero_()
    grown = new["n_basis"] - old["n_basis"]
    if grown and residual_batches is not None:
        table = model.decoder.table
        rows = residual_functions(model, residual_batches, grown)
        with torch.no_grad():  # at the old functions' typical size: Adam's steps are absolute
            size = table[1 : old["n_basis"] + 1].pow(2).mean(-1).sqrt().median()
            table[old["n_basis"] + 1 :] = size * rows * rows.shape[-1] ** 0.5


def residual_functions(model: StarGON, batches: Iterable[PixelBatch], count: int) -> torch.Tensor:
    """`count` unit rows of the table along which the model's fits to `batches` would improve
    most: the leading singular vectors of the per-spectrum gradients of χ²/n with respect to
    a new function of ln λ (`residual_gradients`), whitened by what noise alone would give
    them, so that where the data are noisy a direction must be shared by many spectra to
    count."""
    parts = [residual_gradients(model, batch) for batch in batches]
    gradients = torch.cat([gradient for gradient, _ in parts])
    if len(gradients) < count:
        raise ValueError(f"{count} new functions need as many spectra, not {len(gradients)}")
    noise = sum(variance for _, variance in parts)
    seen = noise > 1e-9 * noise.max()
    unit = torch.where(seen, noise.clamp_min(1e-30).rsqrt(), torch.zeros_like(noise))
    whitened = (gradients * unit).double()
    _, vectors = torch.linalg.eigh(whitened @ whitened.T)  # ascending eigenvalues
    leading = vectors[:, -count:].flip(-1).T
    rows = ((leading @ whitened) * unit).to(gradients.dtype)
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def residual_gradients(model: StarGON, batch: PixelBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, table length): for each spectrum, ∂(χ²/n)/∂t of a function t that it alone reads,
    with weight 1, at t = 0 — the observation's adjoint (LSF, Doppler shift, pixels and
    continuum, through the same `read`) applied to its weighted residual after the GON step.
    The continuum is solved at the fit, so its own change drops out to first order. With it,
    the batch's noise variance of those gradients per table entry (its diagonal, as the
    adjoint of ivar·C²/n²), what they would be if the residuals were noise alone."""
    decoder = model.decoder
    with torch.no_grad():
        basis = model.basis(batch)
    z = model.encode(batch, basis)
    with torch.no_grad():
        normalised = model.observe(z, basis)
        continuum = solve_continuum(batch.design, batch.flux, batch.ivar, normalised)
        residual = batch.flux - continuum * normalised
        n = batch.n_valid.unsqueeze(-1)
        pull = -2 * batch.ivar * residual * continuum / n
        variance = 4 * batch.ivar * continuum**2 / n**2
    free = decoder.table.new_zeros(len(pull), decoder.table.shape[-1], requires_grad=True)
    ln_rest = decoder.rest_frame(batch.wave, batch.v_kms)
    seen, _ = decoder.read(decoder.pyramid(free), ln_rest, batch.resolving_power)
    own = seen.diagonal(dim1=0, dim2=1).T  # row b of the free table at spectrum b's pixels
    gradient, noise = (
        torch.autograd.grad((own * weight).sum(), free, retain_graph=True)[0]
        for weight in (pull, variance)
    )
    return gradient, noise.sum(0)
