"""How finely the training data resolve each rest wavelength: the decoder's honest resolution.

For every bin of ln λ, the resolving power that at least `count` training spectra reach there.
Structure finer than that was taught by a handful of spectra (or by none), so training penalises
it (`BasisDecoder.roughness`): prior samples drawn at GALAH or APOGEE pixels then look like stars,
not like the noise of the six stars that happened to cover a wavelength.
"""

from __future__ import annotations

import math

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
    spectra: list[Spectrum], config: ModelConfig, count: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres in Å, R reached by ≥ `count` spectra in each bin; 0 where fewer)."""
    ln_min, ln_max = math.log(config.wave_min), math.log(config.wave_max)
    n_bins = math.ceil((ln_max - ln_min) / BIN_WIDTH)
    reached = np.zeros((len(spectra), n_bins), dtype=np.float32)
    for row, spectrum in enumerate(spectra):
        good = masked_ivar(spectrum) > 0
        bins = ((np.log(spectrum.wave[good]) - ln_min) / BIN_WIDTH).astype(int)
        keep = (bins >= 0) & (bins < n_bins)
        power = np.broadcast_to(spectrum.resolving_power, spectrum.wave.shape)[good]
        np.maximum.at(reached[row], bins[keep], power[keep])
    if len(spectra) >= count:
        covered = -np.partition(-reached, count - 1, axis=0)[count - 1]
    else:
        covered = np.zeros(n_bins, dtype=np.float32)
    centres = np.exp(ln_min + BIN_WIDTH * (np.arange(n_bins) + 0.5))
    return centres, covered


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
