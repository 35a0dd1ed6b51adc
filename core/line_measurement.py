"""How deep and how strong a line is in a continuum-normalised spectrum, with its error.

The equivalent width is Σ (1 − f_i) Δλ_i over the window's pixels, Δλ_i the width of pixel i's
bin (edges half-way between pixel centres, the end bins as wide as their neighbour's step):
the sum specutils' `equivalent_width(spectrum, continuum=1)` computes. Its error propagates
each pixel's σ (independent pixels, the continuum held at 1): σ_W² = Σ (σ_i Δλ_i)².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LineStrength:
    equivalent_width: float  # Å, positive for absorption
    equivalent_width_error: float  # Å, 1σ
    depth: float  # 1 − the lowest normalised flux in the window
    depth_error: float  # 1σ of that pixel's flux


def bin_widths(wave: np.ndarray) -> np.ndarray:
    """Δλ of each pixel's bin: edges half-way between centres, the ends extended by half a
    step (np.gradient gives exactly these widths)."""
    return np.gradient(np.asarray(wave, dtype=np.float64))


def line_strength(wave: np.ndarray, flux: np.ndarray, sigma: np.ndarray) -> LineStrength:
    """Equivalent width and depth of the normalised `flux` over all the given pixels (the
    window: select it first), with their 1σ errors from the per-pixel `sigma`."""
    wave, flux, sigma = (np.asarray(a, dtype=np.float64) for a in (wave, flux, sigma))
    if wave.size < 2:
        raise ValueError(f"a line window needs at least 2 pixels, got {wave.size}")
    widths = bin_widths(wave)
    lowest = int(np.argmin(flux))
    return LineStrength(
        equivalent_width=float(np.sum((1.0 - flux) * widths)),
        equivalent_width_error=float(np.sqrt(np.sum((sigma * widths) ** 2))),
        depth=float(1.0 - flux[lowest]),
        depth_error=float(sigma[lowest]),
    )
