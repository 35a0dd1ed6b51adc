"""How finely the training data resolve each rest wavelength: the decoder's honest resolution.

For every bin of ln λ, the resolving power that at least `count` training spectra reach there.
Structure finer than that was taught by a handful of spectra (or by none), so training penalises
it (`BasisDecoder.roughness`): prior samples drawn at GALAH or APOGEE pixels then look like stars,
not like the noise of the six stars that happened to cover a wavelength.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from stargon.core.spectrum import Spectrum
from stargon.model.decoder import ModelConfig
from stargon.surveys.atmosphere import masked_ivar

BIN_WIDTH = 5e-4  # in ln λ: 150 km/s
# The penalty blurs to HEADROOM × the supported R: a Gaussian blur also dents structure at its
# own scale, so blurring at exactly the data's R would smooth what the data do constrain.
HEADROOM = 2.0


def resolution_coverage(
    spectra: Iterable[Spectrum], config: ModelConfig, count: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres in Å, R reached by ≥ `count` spectra in each bin; 0 where fewer)."""
    counter = CoverageCounter(config, count)
    for spectrum in spectra:
        counter.add(spectrum)
    return counter.result()


class CoverageCounter:
    """The `count`-th highest R reached in each ln λ bin, over spectra added one at a time:
    memory (count + chunk) × bins, whatever the number of spectra (a survey streamed from
    shards)."""

    def __init__(self, config: ModelConfig, count: int = 20, chunk: int = 256):
        self.ln_min = math.log(config.wave_min)
        self.n_bins = math.ceil((math.log(config.wave_max) - self.ln_min) / BIN_WIDTH)
        self.count, self.chunk, self.seen = count, chunk, 0
        self.top = np.zeros((count, self.n_bins), dtype=np.float32)  # the highest, unordered
        self.pending: list[np.ndarray] = []

    def add(self, spectrum: Spectrum) -> None:
        reached = np.zeros(self.n_bins, dtype=np.float32)
        good = masked_ivar(spectrum) > 0
        bins = ((np.log(spectrum.wave[good]) - self.ln_min) / BIN_WIDTH).astype(int)
        keep = (bins >= 0) & (bins < self.n_bins)
        power = np.broadcast_to(spectrum.resolving_power, spectrum.wave.shape)[good]
        np.maximum.at(reached, bins[keep], power[keep])
        self.pending.append(reached)
        self.seen += 1
        if len(self.pending) >= self.chunk:
            self._merge()

    def absorb(self, other: CoverageCounter) -> None:
        """Count `other`'s spectra too (e.g. another rank's share)."""
        other._merge()
        self.pending.extend(other.top)
        self.seen += other.seen
        self._merge()

    def _merge(self) -> None:
        if self.pending:
            stacked = np.vstack([self.top, *self.pending])
            self.top = -np.partition(-stacked, self.count - 1, axis=0)[: self.count]
            self.pending.clear()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        covered = self.top.min(axis=0) if self.seen >= self.count else np.zeros(self.n_bins)
        centres = np.exp(self.ln_min + BIN_WIDTH * (np.arange(self.n_bins) + 0.5))
        return centres, covered.astype(np.float32)


def smoothness_cells(
    centres: np.ndarray,
    covered: np.ndarray,
    config: ModelConfig,
    n_cells: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n_cells` random rest wavelengths and the resolving power the data support at each
    times HEADROOM (never below the pyramid's lowest R)."""
    ln_wave = rng.uniform(math.log(config.wave_min), math.log(config.wave_max), n_cells)
    wave = np.exp(np.sort(ln_wave))
    power = np.interp(wave, centres, covered)
    power = np.maximum(HEADROOM * power, config.lowest_resolving_power)
    return torch.as_tensor(wave), torch.as_tensor(power, dtype=torch.float32)
