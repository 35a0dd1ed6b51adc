"""Pixel grids and resolving powers of the instruments the model is drawn on.

Each preset reproduces the survey's native wavelength solution (vacuum Å after conversion), so
`stargon sample --instrument lamost` makes spectra that look like LAMOST files pixel for pixel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from stargon.model.physics import air_to_vacuum


@dataclass(frozen=True)
class Instrument:
    name: str
    wave: np.ndarray  # vacuum Å
    resolving_power: np.ndarray  # per pixel
    segments: tuple[tuple[int, int], ...]


def _log_grid(start_log10: float, step_log10: float, n: int) -> np.ndarray:
    return 10.0 ** (start_log10 + step_log10 * np.arange(n))


def _air_linear(start: float, step: float, n: int) -> np.ndarray:
    wave_air = start + step * np.arange(n)
    return air_to_vacuum(torch.as_tensor(wave_air, dtype=torch.float64)).numpy()


def _make(name, wave, resolving_power, boundaries=()) -> Instrument:
    cuts = [int(np.searchsorted(wave, b)) for b in boundaries]
    edges = [0, *cuts, wave.size]
    r = np.broadcast_to(np.asarray(resolving_power, dtype=np.float64), wave.shape).copy()
    return Instrument(name, wave, r, tuple(itertools.pairwise(edges)))


def _galah() -> Instrument:
    arms = [(4713.9, 0.0460), (5648.6, 0.0551), (6478.4, 0.0633), (7585.7, 0.0741)]
    wave = np.concatenate([_air_linear(start, step, 4096) for start, step in arms])
    cuts = tuple(float(wave[4096 * k]) - 1e-6 for k in range(1, 4))
    return _make("GALAH HERMES", wave, 28000.0, cuts)


def _apogee() -> Instrument:
    wave = _log_grid(4.179, 6e-6, 8575)
    gaps = (wave > 15800) & (wave < 15860) | (wave > 16425) & (wave < 16475)
    wave = wave[~gaps]
    return _make("APOGEE", wave, 22500.0, (15830.0, 16455.0))


def presets() -> dict[str, Instrument]:
    miles = _air_linear(3540.5, 0.9, 4300)
    stelib = _air_linear(3202.34, 1.0004, 6700)
    return {
        "apogee": _apogee(),
        "galah": _galah(),
        "lamost": _make("LAMOST LRS", _log_grid(3.5682, 1e-4, 3909), 1800.0, (5900.0,)),
        "miles": _make("MILES", miles, miles / 2.51),
        "stelib": _make("STELIB", stelib, stelib / 3.0),
        "boss": _make("SDSS BOSS", _log_grid(3.5515, 1e-4, 4648), 2000.0, (6000.0,)),
        "gaia_rvs": _make("Gaia RVS", np.arange(8460.0, 8700.0 + 1e-9, 0.1), 11500.0),
    }


def instrument(name: str) -> Instrument:
    table = presets()
    key = name.lower().replace("-", "_").replace(" ", "_")
    if key not in table:
        raise ValueError(f"unknown instrument {name!r}; choose from {', '.join(table)}")
    return table[key]
