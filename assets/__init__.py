"""What this project made itself: the embedded default model and the line list."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from stargon.core.physics import velocity_of_factor

LINE_LIST = Path(__file__).with_name("lines.csv")


@dataclass(frozen=True)
class Line:
    name: str
    species: str
    wavelength: float  # vacuum Å
    kind: str  # "line" or "band"


@cache
def line_list() -> tuple[Line, ...]:
    """The strong stellar lines of assets/lines.csv, sorted by wavelength."""
    with open(LINE_LIST, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        lines = [
            Line(row["name"], row["species"], float(row["wavelength_vacuum"]), row["kind"])
            for row in rows
        ]
    return tuple(sorted(lines, key=lambda line: line.wavelength))


def nearest_line(wavelength: float, tolerance_kms: float = 150.0) -> Line | None:
    """The line of the list closest to `wavelength` (vacuum Å), if within the tolerance."""
    distances = np.abs(velocity_of_factor(wavelength / _line_wavelengths()))
    best = int(np.argmin(distances))
    return line_list()[best] if distances[best] <= tolerance_kms else None


@cache
def _line_wavelengths() -> np.ndarray:
    return np.array([line.wavelength for line in line_list()])


ATMOSPHERE = Path(__file__).with_name("atmosphere.csv")


@dataclass(frozen=True)
class AtmosphereBand:
    name: str
    kind: str  # "telluric" (absorption) or "sky" (emission)
    wave_min: float  # vacuum Å, observed frame
    wave_max: float


@cache
def atmosphere_bands() -> tuple[AtmosphereBand, ...]:
    """Telluric bands and sky lines of assets/atmosphere.csv, sorted by wavelength."""
    with open(ATMOSPHERE, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        bands = [
            AtmosphereBand(row["name"], row["kind"], float(row["wave_min"]), float(row["wave_max"]))
            for row in rows
        ]
    return tuple(sorted(bands, key=lambda band: band.wave_min))
