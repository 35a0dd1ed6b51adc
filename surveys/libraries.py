"""Flux-calibrated stellar libraries in the rest frame: MILES and STELIB (air wavelengths).

Neither publishes per-pixel errors; ivar is a constant from the DER_SNR noise estimate and
`has_errors` is False. Their spectral resolution is a constant FWHM in Å, so R varies per pixel.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

from stargon.core.spectrum import Spectrum, noise_ivar
from stargon.surveys.common import (
    clean_star_name,
    files_beside,
    image_data,
    linear_axis,
)
from stargon.surveys.instruments import MILES, STELIB, Instrument
from stargon.surveys.registry import Probe, open_fits, register

_MILES_NAME = re.compile(r"m(\d{4})V", re.IGNORECASE)


def _is_1d_fits(probe: Probe) -> bool:
    return probe.kind == "fits" and probe.header.get("NAXIS") == 1 and "CRVAL1" in probe.header


def _claims_miles(probe: Probe) -> bool:
    return _is_1d_fits(probe) and probe.path.name.upper().startswith("MILES")


def _claims_stelib(probe: Probe) -> bool:
    return _is_1d_fits(probe) and probe.path.name.upper().startswith("STELIB")


@register("miles", _claims_miles)
def read_miles(path: Path) -> Iterator[Spectrum]:
    wave_air, flux, _ = _read_1d(path)
    match = _MILES_NAME.search(path.name)
    number = match.group(1) if match else None
    name, labels = _miles_catalogue(path).get(number, (None, {}))
    yield _library_spectrum(path, wave_air, flux, MILES, name or path.stem, labels)


@register("stelib", _claims_stelib)
def read_stelib(path: Path) -> Iterator[Spectrum]:
    wave_air, flux, header = _read_1d(path)
    # The file name carries the star name in the spelling MILES uses (OBJECT does not always).
    name = path.stem.split("_")[-1] if "_" in path.stem else header.get("OBJECT", path.stem)
    yield _library_spectrum(path, wave_air, flux, STELIB, clean_star_name(str(name)), {})


def _read_1d(path: Path):
    with open_fits(path) as hdul:
        flux = image_data(hdul, 0, path, ndim=1)
        header = hdul[0].header.copy()
    return linear_axis(header, flux.size, path), flux, header


def _library_spectrum(
    path: Path, wave_air, flux, instrument: Instrument, star: str, labels
) -> Spectrum:
    wave = instrument.to_vacuum(wave_air)
    return Spectrum(
        wave=wave,
        flux=flux,
        ivar=noise_ivar(flux, covered=flux > 0),
        instrument=instrument.name,
        resolving_power=instrument.resolving_power_at(wave),
        frame="rest",
        normalised=False,
        source=str(path),
        star_id=star,
        labels=dict(labels),
        has_errors=False,
        flux_unit="erg / (s cm2 Angstrom)" if instrument is STELIB else "",
    )


def _miles_catalogue(path: Path) -> dict[str, tuple[str | None, dict[str, float]]]:
    """MILES number → (star name, labels), from paramsMILES and MILES_params.db beside it."""
    names: dict[str, str] = {}
    for params in files_beside(path, "paramsMILES*.txt", levels=1):
        names = _miles_names(params)
        break
    labels: dict[str, dict[str, float]] = {}
    for db in files_beside(path, "MILES_params.db", levels=1):
        labels = _miles_labels(db)
        break
    return {n: (names.get(n), labels.get(n, {})) for n in set(names) | set(labels)}


@functools.lru_cache(maxsize=4)
def _miles_names(params: Path) -> dict[str, str]:
    names = {}
    for line in params.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and re.fullmatch(r"\d{4}", parts[1]) and not line.startswith(" "):
            names[parts[1]] = clean_star_name(parts[0])
    return names


@functools.lru_cache(maxsize=4)
def _miles_labels(db: Path) -> dict[str, dict[str, float]]:
    """The pared-down table: number, Teff, logg, [Fe/H]; 99999/9999 mean missing."""
    labels = {}
    for line in db.read_text().splitlines():
        parts = line.split()
        if line.startswith("#") or len(parts) < 4:
            continue
        teff, logg, feh = (float(p) for p in parts[1:4])
        entry = {"teff": teff, "logg": logg, "fe_h": feh}
        labels[parts[0]] = {k: v for k, v in entry.items() if abs(v) < 9999}
    return labels
