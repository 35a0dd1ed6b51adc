"""What a fit may spend and when it stops: the settings of the velocity search and the MAP
refinement, in one dataclass that `stargon fit`'s options are made from (`stargon/options.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class FitConfig:
    refine_steps: Annotated[int, "Gauss–Newton steps at most, per spectrum (0: none)."] = 20
    v_max: Annotated[float, "Velocity search range either side of 0 (km/s)."] = 1000.0
    fine_half_width: Annotated[float, "Own-template scan: half width at least (km/s)."] = 15.0
    fine_step: Annotated[float, "Own-template scan: step at least (km/s)."] = 1.0
    fine_steps_per_fwhm: Annotated[float, "Own-template scan: steps per LSF FWHM."] = 20.0
    scan_budget: Annotated[int, "Complex numbers per chunk of the template scan."] = 8_000_000
    scan_samples_per_sigma: Annotated[float, "Template scan grid: steps per LSF σ."] = 2.5
    gain_tolerance: Annotated[float, "A step gaining less in χ² ends a spectrum's fit."] = 1e-2
    relative_gain_tolerance: Annotated[float, "… or gaining less than this share of χ²."] = 1e-6
    continuum_ridge: Annotated[float, "Relative ridge on unused continuum columns."] = 1e-6
    relinearise: Annotated[float, "Re-read the basis once v moved this share of the FWHM."] = 0.002
    max_rounds: Annotated[int, "Readings of the basis at most."] = 3
    pixel_budget: Annotated[int, "Pixels per batch at most (64 LAMOST spectra)."] = 262_144
