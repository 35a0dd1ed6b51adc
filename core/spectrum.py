"""The one spectrum record every reader returns, and its validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from astropy import units as u

Frame = Literal["observed", "rest"]


class SpectrumReadError(ValueError):
    """A file that cannot become a Spectrum; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Spectrum:
    """One observed (or rest-frame) spectrum at its native pixels.

    `wave` is vacuum Å, float64, strictly increasing. `ivar` is 0 where a pixel is masked and
    never NaN; `flux` is finite everywhere (masked pixels hold 0). `has_errors` is False for
    sources that publish no uncertainties: their ivar then comes from a DER_SNR noise estimate.
    `synthetic` marks model-made spectra, which must never be counted as real data.
    """

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    instrument: str
    resolving_power: float | np.ndarray
    frame: Frame
    normalised: bool
    source: str
    star_id: str
    segments: list[tuple[int, int]] = field(default_factory=list)
    labels: dict[str, float] = field(default_factory=dict)
    has_errors: bool = True
    flux_unit: str = ""
    synthetic: bool = False

    def __post_init__(self) -> None:
        self.wave = np.asarray(self.wave, dtype=np.float64)
        self.flux = np.asarray(self.flux, dtype=np.float64)
        self.ivar = np.asarray(self.ivar, dtype=np.float64)
        if not self.segments:
            self.segments = [(0, self.wave.size)]
        self._validate()

    def _validate(self) -> None:
        def fail(problem: str) -> None:
            raise SpectrumReadError(self.source, problem)

        if self.wave.ndim != 1 or self.wave.size < 2:
            fail(f"wavelength array must be 1-D with at least 2 pixels, got {self.wave.shape}")
        if self.flux.shape != self.wave.shape or self.ivar.shape != self.wave.shape:
            fail(
                f"wave, flux and ivar shapes differ: {self.wave.shape}, "
                f"{self.flux.shape}, {self.ivar.shape}"
            )
        if not np.all(np.isfinite(self.wave)):
            fail("wavelength array contains NaN or infinite values")
        if np.any(np.diff(self.wave) <= 0):
            bad = int(np.argmax(np.diff(self.wave) <= 0))
            fail(f"wavelengths are not strictly increasing (pixel {bad} → {bad + 1})")
        if np.any(self.ivar < 0):
            fail(f"negative inverse variance in {int(np.sum(self.ivar < 0))} pixels")
        if self.frame not in ("observed", "rest"):
            fail(f"frame must be 'observed' or 'rest', got {self.frame!r}")
        bad_flux = ~np.isfinite(self.flux) | ~np.isfinite(self.ivar)
        self.flux = np.where(bad_flux, 0.0, self.flux)
        self.ivar = np.where(bad_flux, 0.0, self.ivar)
        if not np.any(self.ivar > 0):
            fail("no valid pixels: flux is all NaN or every pixel is masked")
        ends = [end for _, end in self.segments]
        if any(a >= b for a, b in self.segments) or max(ends) > self.wave.size:
            fail(f"detector segments {self.segments} do not fit {self.wave.size} pixels")

    @property
    def n_pixels(self) -> int:
        return int(self.wave.size)

    @property
    def valid(self) -> np.ndarray:
        return self.ivar > 0

    @property
    def wavelength(self) -> u.Quantity:
        """Vacuum wavelengths with units, for astropy users."""
        return self.wave * u.AA

    @property
    def uncertainty(self) -> np.ndarray:
        """1σ per pixel (inf where masked)."""
        with np.errstate(divide="ignore"):
            return np.where(self.valid, 1.0 / np.sqrt(self.ivar), np.inf)

    def median_snr(self) -> float:
        """Median per-pixel S/N over valid pixels: |flux| · sqrt(ivar)."""
        snr = np.abs(self.flux[self.valid]) * np.sqrt(self.ivar[self.valid])
        return float(np.median(snr))

    def to_specutils(self):
        """This spectrum as a specutils `Spectrum` (vacuum Å, inverse variance, mask; the
        resolving power, frame and instrument in `meta`)."""
        from stargon.core.interop import to_specutils

        return to_specutils(self)

    @classmethod
    def from_specutils(cls, spectrum, source: str = "specutils", **settings) -> Spectrum:
        """A `Spectrum` from a 1-D specutils spectrum; `settings` are `UserSettings` fields
        (resolving_power=…, medium="air", frame="rest"), needed where the spectrum's `meta`
        and header do not say."""
        from stargon.core.interop import UserSettings, from_specutils

        return from_specutils(spectrum, source, UserSettings(**settings))

    @property
    def flux_quantity(self) -> u.Quantity:
        """Flux with its unit (dimensionless when normalised or relative)."""
        return self.flux * u.Unit(self.flux_unit)


def der_snr_noise(flux: np.ndarray) -> float:
    """Per-pixel noise from the flux alone: specutils' DER_SNR (Stoehr et al. 2008), whose
    noise is 1.482602/√6 · median |2f_i − f_{i−2} − f_{i+2}|, robust to lines and continuum
    slope in a well-sampled spectrum. For sources that publish no uncertainties."""
    from specutils import Spectrum as SpecutilsSpectrum  # imported here: it takes seconds
    from specutils.analysis import snr_derived

    f = flux[np.isfinite(flux)]
    signal = float(np.median(f)) if f.size else 0.0
    if f.size < 5 or signal == 0.0:
        return float("nan")
    spectrum = SpecutilsSpectrum(
        flux=f * u.dimensionless_unscaled, spectral_axis=np.arange(f.size) * u.pix
    )
    return signal / float(snr_derived(spectrum))


def noise_ivar(flux: np.ndarray, covered: np.ndarray | None = None) -> np.ndarray:
    """Constant ivar from the DER_SNR noise, for sources that publish no uncertainties.

    `covered` marks the pixels that hold data (libraries pad partial coverage with zeros);
    the noise is estimated there only and ivar is 0 elsewhere.
    """
    covered = np.isfinite(flux) if covered is None else covered & np.isfinite(flux)
    sigma = der_snr_noise(flux[covered])
    return np.where(covered, 1.0 / sigma**2 if sigma > 0 else 0.0, 0.0)


def ivar_from_sigma(sigma: np.ndarray) -> np.ndarray:
    """1/σ² where σ is finite and positive, else 0 (masked)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    good = np.isfinite(sigma) & (sigma > 0)
    return np.where(good, 1.0 / np.where(good, sigma, 1.0) ** 2, 0.0)


def usable_ivar(ivar: np.ndarray) -> np.ndarray:
    """ivar where finite and positive, else 0 (masked)."""
    ivar = np.asarray(ivar, dtype=np.float64)
    return np.where(np.isfinite(ivar) & (ivar > 0), ivar, 0.0)
