"""Unusual stars made from ordinary ones, to measure whether the outlier score finds them.

Each maker takes a real spectrum (and its velocity, so that a feature lands where the star's own
line would) and returns a new `Spectrum` that differs in one known way: what a survey scientist
hunting for unusual stars hopes to catch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from stargon.core.physics import lsf_sigma, rest_to_observed
from stargon.core.spectrum import Spectrum

H_ALPHA = 6564.61  # Å, vacuum
SB2_SEPARATION_KMS = 150.0


def _changed(spectrum: Spectrum, what: str, **fields) -> Spectrum:
    return dataclasses.replace(spectrum, source=f"{spectrum.source} ({what})", **fields)


def _level(spectrum: Spectrum) -> float:
    return float(np.median(np.abs(spectrum.flux[spectrum.valid])))


def emission_at_h_alpha(spectrum: Spectrum, v_kms: float, rng: np.random.Generator) -> Spectrum:
    """An Hα emission line (as in a Be star or an active M dwarf) of peak 0.6 × the flux level,
    twice the LSF's width, at the star's velocity."""
    centre = float(rest_to_observed(H_ALPHA, v_kms))
    sigma = 2.0 * float(np.median(lsf_sigma(centre, spectrum.resolving_power)))
    bump = 0.6 * _level(spectrum) * np.exp(-0.5 * ((spectrum.wave - centre) / sigma) ** 2)
    return _changed(spectrum, "Hα emission added", flux=spectrum.flux + bump * spectrum.valid)


def double_lined_binary(spectrum: Spectrum, v_kms: float, rng: np.random.Generator) -> Spectrum:
    """The star plus itself 150 km/s away, at half the flux each (an SB2 of twins)."""
    valid = spectrum.valid
    shifted_wave = rest_to_observed(spectrum.wave[valid], SB2_SEPARATION_KMS)
    companion = np.interp(spectrum.wave, shifted_wave, spectrum.flux[valid])
    return _changed(spectrum, "SB2 companion +150 km/s", flux=0.5 * (spectrum.flux + companion))


def cosmic_ray(spectrum: Spectrum, v_kms: float, rng: np.random.Generator) -> Spectrum:
    """Three adjacent valid pixels raised by 5 × the flux level, somewhere in the spectrum."""
    valid = np.flatnonzero(spectrum.valid)
    start = int(rng.integers(len(valid) // 10, len(valid) * 9 // 10))
    flux = spectrum.flux.copy()
    flux[valid[start : start + 3]] += 5.0 * _level(spectrum)
    return _changed(spectrum, "cosmic ray", flux=flux)


def wrong_resolution(spectrum: Spectrum, v_kms: float, rng: np.random.Generator) -> Spectrum:
    """The spectrum declared at 4 × its resolving power: a file given another instrument's
    settings, whose lines are then far broader than the model is told they are."""
    return _changed(spectrum, "declared R × 4", resolving_power=4.0 * spectrum.resolving_power)


ANOMALIES: dict[str, Callable[[Spectrum, float, np.random.Generator], Spectrum]] = {
    "Hα emission": emission_at_h_alpha,
    "SB2 (+150 km/s twin)": double_lined_binary,
    "cosmic ray (3 px, 5× flux)": cosmic_ray,
    "wrong instrument (R × 4)": wrong_resolution,
}
