"""Independent implementations the tests check the product against (never used by it).

`convolve_lsf` convolves a sampled spectrum with a Gaussian LSF of resolving power R pixel by
pixel, keeping the flux integral: the slow, obvious way, against which the decoder's pyramid
(the LSF the model actually applies) is measured.
"""

from __future__ import annotations

import itertools
import math

import torch

from stargon.core.physics import lsf_sigma


def pixel_widths(wave: torch.Tensor) -> torch.Tensor:
    """Δλ of each pixel from the midpoints between neighbours (edges mirrored)."""
    mid = 0.5 * (wave[..., 1:] + wave[..., :-1])
    left = torch.cat([2 * wave[..., :1] - mid[..., :1], mid], dim=-1)
    right = torch.cat([mid, 2 * wave[..., -1:] - mid[..., -1:]], dim=-1)
    return right - left


def convolve_lsf(
    wave: torch.Tensor,
    flux: torch.Tensor,
    resolving_power: torch.Tensor | float,
    n_sigma: float = 5.0,
) -> torch.Tensor:
    """Convolve with a Gaussian line-spread function on a (possibly non-uniform) grid.

    Each input pixel j spreads its flux f_j Δλ_j as a Gaussian of σ_j = λ_j / (R_j · 2.355),
    normalised over the output pixels, so Σ_i Δλ_i out_i = Σ_j Δλ_j f_j holds to round-off
    (the flux integral is kept, edges included). The kernel is banded (± `n_sigma` σ), so cost
    is O(N · band) and memory O(B · N · band).
    """
    wave = wave.to(flux.dtype) if wave.dtype != flux.dtype else wave
    widths = pixel_widths(wave)
    sigma = lsf_sigma(wave, resolving_power)
    half_band = _half_band(widths, sigma, n_sigma)
    offsets = torch.arange(-half_band, half_band + 1, device=wave.device)

    # weight[..., j, k] = G(λ_{j+k}; λ_j, σ_j) Δλ_{j+k}: where input pixel j lands.
    wave_nb, valid = _neighbours(wave, offsets)
    width_nb, _ = _neighbours(widths, offsets)
    gauss = torch.exp(-0.5 * ((wave_nb - wave.unsqueeze(-1)) / sigma.unsqueeze(-1)) ** 2)
    landing = gauss * width_nb * valid
    landing = landing / landing.sum(-1, keepdim=True)

    # out_i = Σ_k f_{i-k} Δλ_{i-k} landing[i-k, k] / Δλ_i
    spread = (flux * widths).unsqueeze(-1) * landing
    n = wave.shape[-1]
    out = torch.zeros_like(flux)
    for col, k in enumerate(offsets.tolist()):
        lo, hi = max(0, -k), min(n, n - k)
        if lo < hi:
            out[..., lo + k : hi + k] += spread[..., lo:hi, col]
    return out / widths


def _half_band(widths: torch.Tensor, sigma: torch.Tensor, n_sigma: float) -> int:
    with torch.no_grad():
        ratio = (sigma / widths.clamp_min(1e-12)).max().item()
    return max(1, math.ceil(n_sigma * ratio))


def _neighbours(values: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values[..., j + k] for each offset k, with a mask of which neighbours exist."""
    n = values.shape[-1]
    index = torch.arange(n, device=values.device).unsqueeze(-1) + offsets
    valid = (index >= 0) & (index < n)
    gathered = values[..., index.clamp(0, n - 1)]
    return gathered, valid.to(values.dtype)


def cascade_pyramid(table: torch.Tensor, levels) -> list[torch.Tensor]:
    """The LSF pyramid by its definition, the slow way: each level is the one before blurred
    by the width it adds — a Gaussian truncated at 4σ, edge values repeated — and every other
    sample kept when the level's step doubles. (What `BasisDecoder.pyramid` computed every
    training step before it filtered only what reads need.)"""
    tables = [table]
    for previous, level in itertools.pairwise(levels):
        sigma = math.sqrt(level.sigma**2 - previous.sigma**2) / previous.step
        radius = max(1, math.ceil(4.0 * sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=table.dtype)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / kernel.sum()
        source = tables[-1]
        padded = torch.cat(
            [source[:, :1].expand(-1, radius), source, source[:, -1:].expand(-1, radius)], dim=1
        )
        blurred = sum(kernel[k] * padded[:, k : k + source.shape[1]] for k in range(2 * radius + 1))
        tables.append(blurred[:, ::2] if level.step > previous.step else blurred)
    return tables
