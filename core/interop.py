"""specutils ↔ `Spectrum`, and the settings a spectrum of no known instrument needs.

`from_specutils` takes any 1-D specutils spectrum: the spectral axis to vacuum Å (air when the
WCS says AWAV or the settings say so), an uncertainty of any kind (σ, variance, inverse variance)
to ivar, its mask to ivar 0. The resolving power comes from the header (ESO's SPEC_RES and a few
common keys) or the settings, else a clear error. Without errors, ivar is a DER_SNR estimate
and `has_errors` is False. `to_specutils` goes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from astropy import units as u
from astropy.nddata import InverseVariance

from stargon.core.physics import air_to_vacuum
from stargon.core.spectrum import Spectrum, SpectrumReadError, noise_ivar, usable_ivar

RESOLVING_POWER_KEYS = ("SPEC_RES", "RESOLVPW", "RESPOWER", "RESOLUTN", "R_POWER")


@dataclass(frozen=True)
class UserSettings:
    """What a spectrum of no known instrument cannot tell, with the defaults used."""

    resolving_power: Annotated[
        float | None, "R = λ/FWHM of spectra of no known instrument (else from the header)."
    ] = None
    medium: Annotated[
        str | None, "air or vacuum wavelengths in such files (default: the WCS, else vacuum)."
    ] = None
    frame: Annotated[str, "observed or rest frame of such files."] = "observed"
    wavelength_unit: Annotated[str, "Unit of a wavelength column that has none."] = "Angstrom"
    instrument: Annotated[str, "Instrument name recorded for such spectra."] = "user spectrum"

    def __post_init__(self) -> None:
        if self.medium not in (None, "air", "vacuum"):
            raise ValueError(f"medium must be air or vacuum, got {self.medium!r}")
        if self.frame not in ("observed", "rest"):
            raise ValueError(f"frame must be observed or rest, got {self.frame!r}")
        if self.resolving_power is not None and not self.resolving_power > 0:
            raise ValueError(f"resolving power must be positive, got {self.resolving_power}")


def from_specutils(
    spectrum, source: str, settings: UserSettings | None = None, header=None
) -> Spectrum:
    """A specutils spectrum (1-D) as a `Spectrum`: spectral axis to vacuum Å, uncertainty of any
    kind to ivar, its mask to ivar 0; what `to_specutils` put in `meta` comes back."""
    settings = settings or UserSettings()
    header = header if header is not None else spectrum.meta.get("header")
    if spectrum.flux.ndim != 1:
        raise SpectrumReadError(source, f"flux has shape {spectrum.flux.shape}: one spectrum only")
    try:
        wave = spectrum.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
    except u.UnitConversionError as exc:
        raise SpectrumReadError(
            source,
            f"no wavelength axis: its spectral axis is in {spectrum.spectral_axis.unit} "
            "(a 1-D image needs a WCS: CRVAL1, CDELT1, CUNIT1)",
        ) from exc
    flux = np.asarray(spectrum.flux.value, dtype=np.float64)
    ivar = _ivar_from_uncertainty(spectrum.uncertainty)
    if spectrum.mask is not None:
        ivar = None if ivar is None else np.where(spectrum.mask, 0.0, ivar)
    return spectrum_from_arrays(
        source, wave, flux, ivar, settings, air=_is_air(spectrum, header, settings),
        flux_unit=str(spectrum.flux.unit), header=header, meta=spectrum.meta,
    )  # fmt: skip


def to_specutils(spectrum: Spectrum):
    """The record as a specutils spectrum: vacuum Å, flux with its unit, inverse variance,
    masked where ivar is 0, the frame and resolving power in `meta`."""
    from specutils import Spectrum as SpecutilsSpectrum

    unit = u.Unit(spectrum.flux_unit) if spectrum.flux_unit else u.dimensionless_unscaled
    return SpecutilsSpectrum(
        flux=spectrum.flux * unit,
        spectral_axis=spectrum.wave * u.AA,
        uncertainty=InverseVariance(spectrum.ivar / unit**2),
        mask=~spectrum.valid,
        meta={
            "instrument": spectrum.instrument,
            "resolving_power": spectrum.resolving_power,
            "frame": spectrum.frame,
            "normalised": spectrum.normalised,
            "star_id": spectrum.star_id,
            "source": spectrum.source,
        },
    )


def spectrum_from_arrays(
    source: str | Path,
    wave: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray | None,
    settings: UserSettings,
    *,
    air: bool = False,
    flux_unit: str = "",
    header=None,
    meta: dict | None = None,
) -> Spectrum:
    """A `Spectrum` from arrays of a user's file: sorted by wavelength, air → vacuum, ivar from
    DER_SNR when there are no errors. `meta` (what `to_specutils` writes) wins over guesses."""
    meta = meta or {}
    resolving_power = (
        settings.resolving_power
        if settings.resolving_power is not None
        else meta.get("resolving_power", _header_resolving_power(header))
    )
    if resolving_power is None:
        raise SpectrumReadError(
            source,
            "no resolving power: the header has none of "
            f"{', '.join(RESOLVING_POWER_KEYS)}; give one (--resolving-power R, or the upload "
            "panel's R box / instrument)",
        )
    order = np.argsort(wave, kind="stable")
    wave, flux = np.asarray(wave, dtype=np.float64)[order], np.asarray(flux)[order]
    resolving_power = np.asarray(resolving_power, dtype=np.float64)
    resolving_power = (
        float(resolving_power) if resolving_power.ndim == 0 else resolving_power[order]
    )
    has_errors = ivar is not None
    ivar = np.asarray(ivar)[order] if has_errors else noise_ivar(flux)
    if not has_errors and not np.any(ivar > 0):
        raise SpectrumReadError(
            source, "no errors given, and DER_SNR finds no noise in the flux (a noiseless or "
            "model spectrum?): add an error or ivar column",
        )  # fmt: skip
    if air:
        wave = air_to_vacuum(wave)
    flux_unit = "" if flux_unit in ("", "dimensionless") else flux_unit
    median = float(np.median(np.abs(flux[np.isfinite(flux)]))) if flux.size else 0.0
    return Spectrum(
        wave=wave,
        flux=flux,
        ivar=ivar,
        instrument=meta.get("instrument", settings.instrument),
        resolving_power=resolving_power,
        frame=meta.get("frame", settings.frame),
        normalised=meta.get("normalised", not flux_unit and 0.5 < median < 1.5),
        source=str(source),
        star_id=str(meta.get("star_id") or (header or {}).get("OBJECT") or Path(str(source)).stem),
        has_errors=has_errors,
        flux_unit=flux_unit,
    )


def _ivar_from_uncertainty(uncertainty) -> np.ndarray | None:
    """Inverse variance from any astropy NDUncertainty (σ, variance or ivar); 0 where unusable."""
    if uncertainty is None:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return usable_ivar(uncertainty.represent_as(InverseVariance).array)


def _is_air(spectrum, header, settings: UserSettings) -> bool:
    if settings.medium is not None:
        return settings.medium == "air"
    ctype = ""
    if getattr(spectrum, "wcs", None) is not None and hasattr(spectrum.wcs, "wcs"):
        ctype = str(spectrum.wcs.wcs.ctype[0])
    elif header is not None:
        ctype = str(header.get("CTYPE1", ""))
    return ctype.upper().startswith("AWAV")


def _header_resolving_power(header) -> float | None:
    for key in RESOLVING_POWER_KEYS:
        value = (header or {}).get(key)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None
