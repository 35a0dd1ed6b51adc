"""How true is the decoder's LSF? The FWHM of a narrow line drawn through
`StarGON.observation_basis` at resolving power R, against the same sharp line convolved pixel
by pixel with a Gaussian of FWHM λ/R (`tests/oracle.convolve_lsf`), for both ways of mixing two
pyramid levels and 2 or 3 levels per octave. Accuracy only, no timings.

    python -m benchmarks.lsf_accuracy      # seconds
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from benchmarks.common import table
from stargon.model.gon import StarGON
from tests.oracle import convolve_lsf
from tests.test_physics import H_ALPHA, LINE_CONFIG, fwhm, model_with_a_line

RESOLVING_POWERS = (1800.0, 2500.0, 4000.0, 6000.0, 11500.0, 22500.0, 28000.0)


def fwhm_error(model: StarGON, resolving_power: float) -> float:
    """Relative FWHM error (%) of the drawn line against the independent convolution."""
    half_width = 12 * H_ALPHA / resolving_power
    wave = torch.as_tensor(np.arange(H_ALPHA - half_width, H_ALPHA + half_width, half_width / 1500))
    with torch.no_grad():
        sharp = model.observation_basis(wave, 0.0, math.inf)[0]
        drawn = model.observation_basis(wave, 0.0, resolving_power)[0]
    reference = 1 - convolve_lsf(wave, 1 - sharp, resolving_power)
    return 100 * (fwhm(wave.numpy(), drawn.numpy()) / fwhm(wave.numpy(), reference.numpy()) - 1)


def main() -> None:
    torch.set_default_dtype(torch.float64)
    rows = []
    for levels in (2, 3):
        for mixing in ("variance", "fwhm"):
            config = dataclasses.replace(
                LINE_CONFIG, lsf_levels_per_octave=levels, lsf_mixing=mixing
            )
            model = model_with_a_line(sigma_ln=1.5e-5, config=config)  # one table step
            row = {"levels/octave": levels, "mixing": mixing}
            row |= {f"R={r:,.0f}": fwhm_error(model, r) for r in RESOLVING_POWERS}
            rows.append(row)
    print("FWHM error of the decoder's LSF, % (python -m benchmarks.lsf_accuracy)\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
