"""How unusual is a fitted star? Two questions, each scored against the release's own stars.

- **Is its latent rare?** −ln p(z) of its fitted latent under the release's density over real
  training stars (`LatentPrior`): a star the model can describe, but unlike those it learnt from.
- **Does the model fail to describe it?** ln χ²/dof of its fit: emission, a companion, an
  artefact — anything the decoder cannot make.

χ²/dof depends on how well each survey's errors are known (MILES and STELIB carry DER_SNR
estimates), so each part is standardised against the release's fits of its own real stars of the
same instrument (median and 1.4826 × MAD; all instruments pooled where one has too few stars).
The outlier score is the length of the two standardised excesses, each counted only above
typical: a star scores high when either part is far out, higher when both are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from stargon.core.spectrum import Spectrum
from stargon.model.prior import LatentPrior
from stargon.model.refine import FitResult

POOLED = "*"  # the reference over every instrument's stars
MIN_STARS = 20  # an instrument with fewer fitted stars is scored against the pooled reference
SCORE_COLUMNS = ("latent_nll", "latent_excess", "fit_excess", "outlier_score")


def latent_nll(prior: LatentPrior, z: np.ndarray) -> np.ndarray:
    """−ln p(z) (nats) of latents (N, D) under the mixture."""
    z = np.atleast_2d(np.asarray(z, dtype=float))
    terms = [
        np.log(weight)
        + multivariate_normal.logpdf(z, mean, 0.5 * (cov + cov.T), allow_singular=True)
        for weight, mean, cov in zip(
            prior.weights / prior.weights.sum(), prior.means, prior.covariances, strict=True
        )
    ]
    return -logsumexp(np.reshape(terms, (len(terms), len(z))), axis=0)


@dataclass
class OutlierScores:
    latent_nll: np.ndarray  # −ln p(z), nats
    latent_excess: np.ndarray  # (−ln p(z) − typical) / spread, for its instrument
    fit_excess: np.ndarray  # (ln χ²/dof − typical) / spread, for its instrument
    outlier_score: np.ndarray  # hypot of the two excesses above 0

    def row(self, k: int) -> dict[str, float]:
        return {name: float(getattr(self, name)[k]) for name in SCORE_COLUMNS}


@dataclass
class OutlierReference:
    """Per instrument (and `POOLED`): median and robust spread of −ln p(z) and ln χ²/dof over
    the release's fitted real stars."""

    prior: LatentPrior
    stats: dict[str, dict[str, float]]

    @classmethod
    def fit(
        cls,
        prior: LatentPrior,
        instruments: Sequence[str],
        z: np.ndarray,
        chi2_dof: np.ndarray,
    ) -> OutlierReference:
        nll, log_chi2 = latent_nll(prior, z), _log(chi2_dof)
        names = np.asarray(instruments)
        groups = {POOLED: np.ones(len(names), dtype=bool)}
        groups |= {name: names == name for name in np.unique(names)}
        stats = {
            name: {"nll": _centre_spread(nll[rows]), "log_chi2": _centre_spread(log_chi2[rows])}
            for name, rows in groups.items()
            if rows.sum() >= MIN_STARS or name == POOLED
        }
        return cls(prior, {name: _flat(parts) for name, parts in stats.items()})

    def score(
        self, instruments: Sequence[str], z: np.ndarray, chi2_dof: Sequence[float]
    ) -> OutlierScores:
        nll, log_chi2 = latent_nll(self.prior, z), _log(chi2_dof)
        stats = [self.stats.get(name, self.stats[POOLED]) for name in instruments]

        def standardised(values: np.ndarray, part: str) -> np.ndarray:
            centre = np.array([s[f"{part}_centre"] for s in stats])
            return (values - centre) / np.array([s[f"{part}_spread"] for s in stats])

        latent, fit = standardised(nll, "nll"), standardised(log_chi2, "log_chi2")
        score = np.hypot(np.maximum(latent, 0.0), np.maximum(fit, 0.0))
        return OutlierScores(nll, latent, fit, score)

    def score_fits(self, spectra: Sequence[Spectrum], fits: Sequence[FitResult]) -> OutlierScores:
        """`score` of fitted spectra, each with its fit (as `Fitter.fit` returns them)."""
        return self.score([s.instrument for s in spectra], np.array([f.z for f in fits]),
                          [f.chi2_dof for f in fits])  # fmt: skip

    def to_card(self) -> dict[str, dict[str, float]]:
        return self.stats

    @classmethod
    def from_card(cls, prior: LatentPrior | None, card: dict) -> OutlierReference | None:
        stats = card.get("outlier_reference")
        if prior is None or not stats:
            return None
        return cls(prior, stats)


def _log(chi2_dof) -> np.ndarray:
    return np.log(np.maximum(np.asarray(chi2_dof, dtype=float), 1e-12))


def _centre_spread(values: np.ndarray) -> tuple[float, float]:
    centre = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - centre)))
    return centre, max(spread, 1e-6)


def _flat(parts: dict[str, tuple[float, float]]) -> dict[str, float]:
    out = {}
    for name, (centre, spread) in parts.items():
        out[f"{name}_centre"], out[f"{name}_spread"] = centre, spread
    return out
