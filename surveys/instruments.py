"""One `Instrument` per spectrograph: every fact about it, written once.

Readers take the name, resolving power, detector segments and air/vacuum medium from here; the
model takes the continuum degree; `stargon sample`, the explorer and the evaluation draw spectra
on the native pixel grid (`Instrument.pixels()`, vacuum Å, reproducing the survey's own
wavelength solution).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from stargon.core.physics import FWHM_PER_SIGMA, air_to_vacuum

NORMALISED_CONTINUUM_DEGREE = 2  # a residual tilt left by the survey's own normalisation
FLUX_CALIBRATED_CONTINUUM_DEGREE = 6  # the spectral energy distribution's shape, per segment


@dataclass(frozen=True)
class Instrument:
    """A spectrograph as the model sees it. `resolving_power` is R = λ/FWHM at every pixel
    unless `fwhm_angstrom` (a constant FWHM in Å, as libraries quote it) is set."""

    key: str
    name: str  # the `Spectrum.instrument` of its spectra
    resolving_power: float
    medium: Literal["air", "vacuum"]  # of the wavelengths its files publish
    boundaries: tuple[float, ...] = ()  # vacuum Å between detector segments (arms, chips)
    fwhm_angstrom: float | None = None
    continuum_degree: int = FLUX_CALIBRATED_CONTINUUM_DEGREE  # of its flux-calibrated products
    in_space: bool = False  # no telluric absorption or sky lines
    archive: str | None = None  # the `stargon data fetch` kind that downloads its files
    grid: Callable[[], np.ndarray] | None = None  # native pixels in the published medium

    def resolving_power_at(self, wave: np.ndarray) -> np.ndarray:
        """R at each vacuum wavelength."""
        wave = np.asarray(wave, dtype=np.float64)
        if self.fwhm_angstrom is not None:
            return wave / self.fwhm_angstrom
        return np.full(wave.shape, self.resolving_power)

    def segments(self, wave: np.ndarray) -> list[tuple[int, int]]:
        """Pixel ranges [start, stop) of the detector segments on a grid."""
        cuts = [int(np.searchsorted(wave, b)) for b in self.boundaries]
        edges = [0, *[c for c in cuts if 0 < c < wave.size], wave.size]
        return list(itertools.pairwise(edges))

    def to_vacuum(self, wave: np.ndarray) -> np.ndarray:
        """The published wavelengths as vacuum Å."""
        return air_to_vacuum(wave) if self.medium == "air" else np.asarray(wave, dtype=np.float64)

    def pixels(self) -> np.ndarray:
        """The native pixel grid in vacuum Å (a fresh copy: callers may write to it)."""
        if self.grid is None:
            raise ValueError(f"{self.name} has no fixed pixel grid")
        return _vacuum_grid(self).copy()


@functools.cache
def _vacuum_grid(instrument: Instrument) -> np.ndarray:
    return instrument.to_vacuum(instrument.grid())


def log10_grid(start_log10: float, step_log10: float, n: int) -> np.ndarray:
    return 10.0 ** (start_log10 + step_log10 * np.arange(n))


def linear_grid(start: float, step: float, n: int) -> np.ndarray:
    return start + step * np.arange(n)


def _galah_grid() -> np.ndarray:
    """Four HERMES arms of 4,096 pixels each (air Å, the DR3 wavelength solution)."""
    arms = [(4713.9, 0.0460), (5648.6, 0.0551), (6478.4, 0.0633), (7585.7, 0.0741)]
    return np.concatenate([linear_grid(start, step, 4096) for start, step in arms])


def _apogee_grid() -> np.ndarray:
    """apStar's log-linear grid without the two inter-chip gaps."""
    wave = log10_grid(4.179, 6e-6, 8575)
    gaps = (wave > 15800) & (wave < 15860) | (wave > 16425) & (wave < 16475)
    return wave[~gaps]


GALAH = Instrument(
    "galah", "GALAH HERMES", 28000.0, "air", (5000.0, 6000.0, 7000.0), archive="galah",
    grid=_galah_grid,
)  # fmt: skip
APOGEE = Instrument(
    "apogee", "APOGEE", 22500.0, "vacuum", (15830.0, 16455.0), archive="apogee-star",
    grid=_apogee_grid,
)  # fmt: skip
LAMOST = Instrument(
    "lamost", "LAMOST LRS", 1800.0, "vacuum", (5900.0,), archive="lamost",
    grid=lambda: log10_grid(3.5682, 1e-4, 3909),
)  # fmt: skip
MILES = Instrument(
    "miles", "MILES", 0.0, "air", fwhm_angstrom=2.51,  # Falcón-Barroso et al. 2011
    grid=lambda: linear_grid(3540.5, 0.9, 4300),
)  # fmt: skip
STELIB = Instrument(
    "stelib", "STELIB", 0.0, "air", fwhm_angstrom=3.0,  # Le Borgne et al. 2003
    grid=lambda: linear_grid(3202.34, 1.0004, 6700),
)  # fmt: skip
BOSS = Instrument(
    "boss", "SDSS BOSS", 2000.0, "vacuum", (6000.0,), grid=lambda: log10_grid(3.5515, 1e-4, 4648)
)
GAIA_RVS = Instrument(
    "gaia_rvs", "Gaia RVS", 11500.0, "vacuum", in_space=True,
    grid=lambda: np.arange(8460.0, 8700.0 + 1e-9, 0.1),
)  # fmt: skip
MIKE = Instrument("mike", "MIKE", 28000.0, "air")
DESI = Instrument("desi", "DESI", 3500.0, "vacuum", (5780.0, 7570.0))  # arms B, R, Z

INSTRUMENTS: dict[str, Instrument] = {
    i.key: i for i in (APOGEE, GALAH, LAMOST, MILES, STELIB, BOSS, GAIA_RVS, MIKE, DESI)
}


def instrument(name: str) -> Instrument:
    """An instrument by key ("lamost", "gaia-rvs") or by its spectra's name ("LAMOST LRS")."""
    key = name.lower().replace("-", "_").replace(" ", "_")
    if key in INSTRUMENTS:
        return INSTRUMENTS[key]
    for item in INSTRUMENTS.values():
        if item.name == name:
            return item
    raise ValueError(f"unknown instrument {name!r}; choose from {', '.join(INSTRUMENTS)}")


def drawable() -> dict[str, Instrument]:
    """The instruments with a native pixel grid: what spectra can be drawn on."""
    return {key: item for key, item in INSTRUMENTS.items() if item.grid is not None}


def instrument_of(name: str) -> Instrument | None:
    """The instrument of a spectrum's `instrument` string, None for one we do not know."""
    return next((i for i in INSTRUMENTS.values() if i.name == name), None)


def resolving_power_from_lsf_sigma(sigma_log10: np.ndarray) -> np.ndarray:
    """R from a Gaussian LSF σ in log10 λ (SDSS `wdisp` × pixel step)."""
    return 1.0 / (FWHM_PER_SIGMA * sigma_log10 * np.log(10))
