"""Which pixels of a spectrum the Earth's atmosphere or the detector edges spoil.

Telluric bands and sky lines (assets/atmosphere.csv) sit still in the observed frame while the
star moves; a model that fits them spends latents on the weather and pulls radial velocities
toward zero. They are masked (ivar = 0) wherever spectra enter the model: training, fitting and
evaluation all go through `masked_ivar`.
"""

from __future__ import annotations

import numpy as np
from astropy import constants

from stargon.assets import atmosphere_bands
from stargon.surveys.spectrum import Spectrum

SPACE_INSTRUMENTS = frozenset({"Gaia RVS"})  # above the atmosphere: only edges are masked
# A rest-frame library spectrum had the star's velocity removed, so the bands moved by −v:
# they are widened by this much either side (library stars rarely exceed it).
REST_FRAME_MARGIN_KMS = 150.0
EDGE_FRACTION = 0.01  # the outer 1 % of each detector segment (throughput and LSF fall-off)
_C_KMS = constants.c.to_value("km/s")


def atmosphere_mask(spectrum: Spectrum) -> np.ndarray:
    """True where a pixel is shaped by the atmosphere or lies on a segment's edge."""
    masked = np.zeros(spectrum.n_pixels, dtype=bool)
    if spectrum.synthetic:
        return masked
    wave = spectrum.wave
    if spectrum.instrument not in SPACE_INSTRUMENTS:
        margin = 0.0 if spectrum.frame == "observed" else REST_FRAME_MARGIN_KMS / _C_KMS
        for band in atmosphere_bands():
            lo, hi = band.wave_min * (1 - margin), band.wave_max * (1 + margin)
            masked |= (wave >= lo) & (wave <= hi)
    for start, stop in spectrum.segments:
        span = wave[stop - 1] - wave[start]
        edge = EDGE_FRACTION * span
        part = wave[start:stop]
        masked[start:stop] |= (part < wave[start] + edge) | (part > wave[stop - 1] - edge)
    return masked


def masked_ivar(spectrum: Spectrum) -> np.ndarray:
    """The spectrum's ivar with atmosphere and edges set to 0 (unchanged if nothing would be left,
    e.g. a cut-out that lies wholly inside a band: better a flagged fit than none)."""
    ivar = np.where(atmosphere_mask(spectrum), 0.0, spectrum.ivar)
    return ivar if np.any(ivar > 0) else spectrum.ivar
