"""The model's own pseudo-continuum, so that a "normalised" model spectrum sits at 1.

The decoder and the fitted continuum polynomial share the overall level: C·f is what the data
constrain, not how it splits. For display, exports and reports, f is divided by its upper
envelope (and C multiplied by it, so C·f is untouched). The envelope, per stretch of pixels
between gaps: the 95th percentile of blocks an eighth of `WINDOW_KMS` wide, the median of those
over the window (robust to a stretch the decoder never learned), interpolated back to the
pixels and smoothed by a running mean of the window. In line-blanketed regions (the blue of
cool stars) it is a pseudo-continuum, as observers' normalisations are. Linear in the pixel
count: ~1 ms for 16k pixels.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from scipy.ndimage import median_filter, uniform_filter1d

from stargon.core.physics import velocity_of_factor

WINDOW_KMS = 5000.0  # ≈ 100 Å at Hα: wider than most line wings, narrower than the SED's bends
BLOCKS_PER_WINDOW = 8
PERCENTILE = 95
GAP_FACTOR = 20.0  # a jump of this many median pixel steps starts a new stretch


def pseudo_continuum(
    wave: np.ndarray,
    flux: np.ndarray,
    window_kms: float = WINDOW_KMS,
    percentile: float = PERCENTILE,
    parts: list[tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """The upper envelope of `flux` (..., N) at increasing `wave` (N,); 1 where it is not
    positive. `parts`: the stretches (`stretches`), when `wave` is a run of whole stretches cut
    from a longer spectrum (the envelope of each depends on it alone)."""
    flux = np.asarray(flux, dtype=np.float64)
    envelope = np.ones_like(flux)
    for start, stop, size in stretches(wave, window_kms) if parts is None else parts:
        part = slice(start, stop)
        envelope[..., part] = (
            _envelope(flux[..., part], size, percentile) if size else flux[..., part]
        )
    return np.where(envelope > 0, envelope, 1.0)


def stretches(wave: np.ndarray, window_kms: float = WINDOW_KMS) -> list[tuple[int, int, int]]:
    """(start, stop, window in pixels) of each stretch between gaps; window 0 for a stretch too
    short to smooth (its envelope is the flux). The explorer's page redoes the envelope from
    these (`explorer.client`)."""
    wave = np.asarray(wave, dtype=np.float64)
    bounds = [0, *gap_starts(wave), wave.size]
    result = []
    for start, stop in pairwise(bounds):
        if stop - start < 3:
            result.append((start, stop, 0))
            continue
        step_kms = float(
            np.median(velocity_of_factor(wave[start + 1 : stop] / wave[start : stop - 1]))
        )
        size = int(np.clip(round(window_kms / max(step_kms, 1e-9)), 1, stop - start))
        result.append((start, stop, size))
    return result


def gap_starts(x: np.ndarray) -> list[int]:
    """Indices that follow a jump in `x` of more than GAP_FACTOR median steps (between GALAH's
    arms, APOGEE's chips, a masked stretch): where a new stretch starts."""
    if x.size < 3:
        return []
    steps = np.diff(x)
    return [int(c) for c in np.flatnonzero(steps > GAP_FACTOR * np.median(steps)) + 1]


def _envelope(flux: np.ndarray, size: int, percentile: float) -> np.ndarray:
    """Block percentiles → running median over a window → pixels → running mean."""
    block = max(1, size // BLOCKS_PER_WINDOW)
    n_blocks = -(-flux.shape[-1] // block)
    pad = [(0, 0)] * (flux.ndim - 1) + [(0, n_blocks * block - flux.shape[-1])]
    blocks = np.pad(flux, pad, mode="edge").reshape(*flux.shape[:-1], n_blocks, block)
    tops = np.percentile(blocks, percentile, axis=-1)
    window = (1,) * (flux.ndim - 1) + (max(1, min(BLOCKS_PER_WINDOW, n_blocks)),)
    tops = median_filter(tops, size=window, mode="nearest")
    centres = (np.arange(n_blocks) + 0.5) * block - 0.5
    pixels = np.arange(flux.shape[-1])
    rows = tops.reshape(-1, n_blocks)
    envelope = np.stack([np.interp(pixels, centres, row) for row in rows])
    envelope = envelope.reshape(*flux.shape)
    return uniform_filter1d(envelope, size, axis=-1, mode="nearest")
