"""Where in wavelength each latent acts: |∂f/∂z_k| on a rest-frame grid, matched to lines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import find_peaks

from stargon.assets import Line, nearest_line
from stargon.core.physics import C_KMS
from stargon.model.fitter import Fitter


def rest_grid(
    wave_min: float = 3500.0, wave_max: float = 17000.0, resolving_power: float = 5000.0
) -> np.ndarray:
    """A ln-uniform vacuum grid with two pixels per resolution element."""
    step = 1.0 / (2.0 * resolving_power)
    return np.exp(np.arange(np.log(wave_min), np.log(wave_max), step))


def latent_sensitivity(
    fitter: Fitter,
    z: torch.Tensor,
    wave: np.ndarray,
    resolving_power: float = 5000.0,
    directions: np.ndarray | None = None,
) -> np.ndarray:
    """Mean over the rows of z of |∂f/∂z_k| at each wavelength: (D, P). With `directions`
    (D, D' columns, e.g. the whitening's ∂z/∂w) the derivative along each direction."""
    with torch.no_grad():
        basis = fitter.model.observation_basis(
            torch.as_tensor(wave), 0.0, resolving_power, fitter.pyramid
        )
    jacobian = fitter.jacobian(z.to(basis.dtype), basis)  # (N, P, D)
    if directions is not None:
        jacobian = jacobian @ torch.as_tensor(directions, dtype=jacobian.dtype)
    return jacobian.abs().mean(0).T.cpu().numpy()


@dataclass
class Region:
    wavelength: float  # peak of |∂f/∂z_k|, vacuum Å
    strength: float  # the peak value
    line: Line | None  # the nearest known line within the tolerance


def sensitive_regions(
    wave: np.ndarray, sensitivity: np.ndarray, n: int = 5, separation_kms: float = 300.0
) -> list[Region]:
    """The n strongest peaks of one latent's sensitivity, at least `separation_kms` apart."""
    step_kms = C_KMS * float(np.median(np.diff(np.log(wave))))
    distance = max(1, round(separation_kms / step_kms))
    peaks, _ = find_peaks(sensitivity, distance=distance)
    strongest = peaks[np.argsort(sensitivity[peaks])[::-1][:n]]
    return [
        Region(float(wave[i]), float(sensitivity[i]), nearest_line(float(wave[i])))
        for i in strongest
    ]
