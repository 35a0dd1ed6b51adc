"""Which pixels of a spectrum the Earth's atmosphere or the detector edges spoil.

Telluric bands and sky lines (assets/atmosphere.csv) sit still in the observed frame while the
star moves; a model that fits them spends latents on the weather and pulls radial velocities
toward zero. They are masked (ivar = 0) wherever spectra enter the model: training, fitting and
evaluation all go through `masked_ivar`.
"""

from __future__ import annotations

import numpy as np

from stargon.assets import atmosphere_bands
from stargon.core.physics import doppler_factor
from stargon.core.spectrum import Spectrum
from stargon.surveys.instruments import instrument_of

# A rest-frame library spectrum had the star's velocity removed, so the bands moved by −v:
# they are widened by this much either side (library stars rarely exceed it).
REST_FRAME_MARGIN_KMS = 150.0
EDGE_FRACTION = 0.01  # the outer 1 % of each detector segment (throughput and LSF fall-off)


def atmosphere_mask(spectrum: Spectrum) -> np.ndarray:
    """True where a pixel is shaped by the atmosphere or lies on a segment's edge."""
    masked = np.zeros(spectrum.n_pixels, dtype=bool)
    if spectrum.synthetic:
        return masked
    wave = spectrum.wave
    known = instrument_of(spectrum.instrument)
    if not (known and known.in_space):  # above the atmosphere only edges are masked
        margin = 0.0 if spectrum.frame == "observed" else REST_FRAME_MARGIN_KMS
        for lo, hi in widened_bands(margin):
            masked |= (wave >= lo) & (wave <= hi)
    for start, stop in spectrum.segments:
        span = wave[stop - 1] - wave[start]
        edge = EDGE_FRACTION * span
        part = wave[start:stop]
        masked[start:stop] |= (part < wave[start] + edge) | (part > wave[stop - 1] - edge)
    return masked


def widened_bands(margin_kms: float) -> list[tuple[float, float]]:
    """The atmosphere's bands (vacuum Å) as seen from stars moving by up to ±margin_kms."""
    return [
        (band.wave_min * doppler_factor(-margin_kms), band.wave_max * doppler_factor(margin_kms))
        for band in atmosphere_bands()
    ]


def masked_ivar(spectrum: Spectrum) -> np.ndarray:
    """The spectrum's ivar with atmosphere and edges set to 0 (unchanged if nothing would be left,
    e.g. a cut-out that lies wholly inside a band: better a flagged fit than none)."""
    ivar = np.where(atmosphere_mask(spectrum), 0.0, spectrum.ivar)
    return ivar if np.any(ivar > 0) else spectrum.ivar
