"""The physics every layer shares, written once: the speed of light, the Doppler factor,
resolving power ↔ Gaussian σ, and air ↔ vacuum wavelengths.

The Doppler functions are plain arithmetic, so they take floats, NumPy arrays and torch tensors
alike; the model reads its rest-frame decoder through `doppler_factor`, the explorer and the
evaluation shift axes with `rest_to_observed` / `observed_to_rest`. Wavelengths are vacuum Å,
velocities km/s (positive = receding).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
from astropy import constants

C_KMS: float = constants.c.to_value("km/s")
FWHM_PER_SIGMA: float = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Below this wavelength air and vacuum coincide by convention (IAU; the UV is quoted in vacuum).
AIR_VACUUM_MIN_ANGSTROM = 2000.0

Array = TypeVar("Array")


def doppler_factor(v_kms: Array) -> Array:
    """λ_obs / λ_rest = 1 + v/c, the first-order (non-relativistic) Doppler factor the surveys
    use for their radial velocities."""
    return 1.0 + v_kms / C_KMS


def velocity_of_factor(factor: Array) -> Array:
    """The inverse of `doppler_factor`: v = c (λ_obs / λ_rest − 1)."""
    return (factor - 1.0) * C_KMS


def rest_to_observed(wave_rest: Array, v_kms) -> Array:
    """λ_obs = λ_rest (1 + v/c)."""
    return wave_rest * doppler_factor(v_kms)


def observed_to_rest(wave_obs: Array, v_kms) -> Array:
    """λ_rest = λ_obs / (1 + v/c): where an observed pixel samples the rest-frame spectrum."""
    return wave_obs / doppler_factor(v_kms)


def lsf_sigma(wave: Array, resolving_power) -> Array:
    """Gaussian σ (same unit as `wave`) of an instrument of resolving power R = λ / FWHM."""
    return wave / (resolving_power * FWHM_PER_SIGMA)


def vacuum_to_air(wave_vac: np.ndarray) -> np.ndarray:
    """IAU standard conversion (Morton 2000, ApJS 130, 403; the SDSS/VALD form)."""
    wave_vac = np.asarray(wave_vac, dtype=np.float64)
    s2 = (1.0e4 / wave_vac) ** 2
    n = 1.0 + 0.0000834254 + 0.02406147 / (130.0 - s2) + 0.00015998 / (38.9 - s2)
    return np.where(wave_vac < AIR_VACUUM_MIN_ANGSTROM, wave_vac, wave_vac / n)


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Inverse of `vacuum_to_air` (N. Piskunov's fit to Morton 2000, as used by VALD)."""
    wave_air = np.asarray(wave_air, dtype=np.float64)
    s2 = (1.0e4 / wave_air) ** 2
    n = (
        1.0
        + 0.00008336624212083
        + 0.02408926869968 / (130.1065924522 - s2)
        + 0.0001599740894897 / (38.92568793293 - s2)
    )
    return np.where(wave_air < AIR_VACUUM_MIN_ANGSTROM, wave_air, wave_air * n)
