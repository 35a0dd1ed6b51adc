"""Label directions: where a stellar label points in the whitened latent space.

From stars with catalogue labels, the whitened latents are regressed on all the labels at once
(w ≈ a + Σ_l b_l · label_l, least squares), so b_l is how the latent moves per unit of label l
with the other labels held. A slider can follow b_l continuously from any star, and its effect
on the spectrum can be measured line by line (`line_response`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from stargon.assets import Line, line_list
from stargon.model.whitening import Whitening

if TYPE_CHECKING:
    from stargon.model.fitter import Fitter

LABELS = ("teff", "logg", "fe_h")


@dataclass
class LabelDirections:
    names: tuple[str, ...]  # the labels, e.g. ("teff", "logg", "fe_h")
    per_unit: np.ndarray  # (L, D) change of the whitened latent per unit of each label
    intercept: np.ndarray  # (D,) the regression's constant
    label_mean: np.ndarray  # (L,) mean labels of the stars it was fitted on
    n_stars: int

    @classmethod
    def of_stars(
        cls, whitened: np.ndarray, stars: list[dict], teff_range=(3500.0, 8000.0)
    ) -> LabelDirections:
        """Teff, log g, [Fe/H] directions from star records (dicts with those labels) and their
        whitened latents, over the stars within `teff_range` (where a linear map holds)."""
        low, high = teff_range
        labelled = [i for i, star in enumerate(stars) if all(k in star for k in LABELS)]
        rows = [i for i in labelled if low <= stars[i]["teff"] <= high]
        labels = np.array([[stars[i][k] for k in LABELS] for i in rows]).reshape(-1, len(LABELS))
        return cls.fit(whitened[rows], labels, LABELS)

    @classmethod
    def fit(cls, whitened: np.ndarray, labels: np.ndarray, names: tuple[str, ...]):
        """Least squares of whitened latents (N, D) on labels (N, L) and a constant."""
        if len(labels) <= labels.shape[1] + 1:
            raise ValueError(f"{len(labels)} stars cannot fix {labels.shape[1]} label directions")
        design = np.column_stack([np.ones(len(labels)), labels])
        coefficients, *_ = np.linalg.lstsq(design, whitened, rcond=None)
        return cls(tuple(names), coefficients[1:], coefficients[0], labels.mean(0), len(labels))

    def direction(self, name: str) -> np.ndarray:
        """(D,) whitened latent change per unit of the label `name`."""
        return self.per_unit[self.names.index(name)]

    def typical(self, labels: np.ndarray | None = None) -> np.ndarray:
        """The whitened latent the regression gives for `labels` (default: their mean)."""
        labels = self.label_mean if labels is None else np.asarray(labels, dtype=float)
        return self.intercept + labels @ self.per_unit


@dataclass
class LineResponse:
    line: Line
    depth: float  # 1 − normalised flux at the line centre, at the starting latent
    change: float  # depth change for the step along the direction (+ deepens)


def line_response(
    fitter: Fitter,
    whitening: Whitening,
    w: np.ndarray,
    step: np.ndarray,
    wave_range: tuple[float, float],
    resolving_power: float,
) -> list[LineResponse]:
    """How each listed line inside `wave_range` changes depth when the whitened latent goes
    from w − step/2 to w + step/2 (a central difference), seen at `resolving_power` in the
    rest frame: depth = 1 − normalised model flux at the line's centre."""
    lines = [line for line in line_list() if wave_range[0] < line.wavelength < wave_range[1]]
    if not lines:
        return []
    centres = torch.tensor([line.wavelength for line in lines], dtype=torch.float64)
    ends = np.stack([w - step / 2, w, w + step / 2])
    z = torch.as_tensor(whitening.mean + ends @ whitening.matrix.T, dtype=torch.float32)
    with torch.no_grad():
        basis = fitter.model.observation_basis(centres, 0.0, resolving_power, fitter.pyramid)
        flux = fitter.model.observe(z, basis).double().numpy()
    depth = 1.0 - flux
    return [
        LineResponse(line, float(depth[1, k]), float(depth[2, k] - depth[0, k]))
        for k, line in enumerate(lines)
    ]
