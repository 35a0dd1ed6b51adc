"""Small metrics with known answers, shared by the report and its tests."""

from __future__ import annotations

import numpy as np
from scipy.stats import median_abs_deviation, pearsonr, rankdata
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def fractional_rms(flux: np.ndarray, model: np.ndarray) -> float:
    """RMS of the residual over the median |flux|: the measure for sources without errors."""
    return float(np.sqrt(np.mean((flux - model) ** 2)) / np.median(np.abs(flux)))


def c2st_accuracy(
    real: np.ndarray, generated: np.ndarray, seed: int = 0, folds: int = 5
) -> tuple[float, float]:
    """Classifier two-sample test: cross-validated accuracy (mean, std over folds) of a linear
    classifier on PCA features telling real from generated rows. 0.5: indistinguishable."""
    x, y = _two_samples(real, generated)
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_score(_c2st_classifier(x, seed), x, y, cv=splits, scoring="accuracy")
    return float(scores.mean()), float(scores.std())


def c2st_column_weights(real: np.ndarray, generated: np.ndarray, seed: int = 0) -> np.ndarray:
    """Which columns (pixels) the C2ST's classifier uses, fitted on every row: |the logit's
    derivative| with respect to each standardised column, PCA's components times the logistic
    coefficients. Large where real and generated rows differ."""
    x, y = _two_samples(real, generated)
    classifier = _c2st_classifier(x, seed).fit(x, y)
    pca, logistic = classifier[1], classifier[2]
    return np.abs(pca.components_.T @ logistic.coef_[0])


def _two_samples(real: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.vstack([real, generated])
    return x, np.r_[np.zeros(len(real)), np.ones(len(generated))]


def _c2st_classifier(x: np.ndarray, seed: int):
    n_components = min(10, x.shape[1], len(x) // 4)
    return make_pipeline(
        StandardScaler(),
        PCA(n_components, random_state=seed),
        LogisticRegression(max_iter=2000),
    )


def probe(kind: str):
    """A label probe: 'linear' (ridge, α by CV) or 'knn' (k = 7, distance-weighted)."""
    if kind == "linear":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    if kind == "knn":
        return make_pipeline(StandardScaler(), KNeighborsRegressor(7, weights="distance"))
    raise ValueError(f"unknown probe {kind!r} (linear or knn)")


def probe_rmse(
    kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> tuple[float, np.ndarray]:
    """(RMSE on the test rows, the predictions) of a probe fitted on the training rows."""
    predicted = probe(kind).fit(x_train, y_train).predict(x_test)
    return float(np.sqrt(np.mean((predicted - y_test) ** 2))), predicted


def partial_spearman(x: np.ndarray, y: np.ndarray, covariates: np.ndarray | None = None) -> float:
    """Spearman correlation of x and y after removing what the covariates (N, C) explain
    linearly in rank: e.g. S/N against |z| given Teff, log g, [Fe/H], since a library's S/N
    itself follows Teff. Without covariates, the plain Spearman correlation."""
    n = len(x)
    design = np.ones((n, 1))
    if covariates is not None and np.size(covariates):
        ranks = np.column_stack([rankdata(c) for c in np.asarray(covariates).reshape(n, -1).T])
        design = np.column_stack([design, ranks])
    residuals = []
    for values in (x, y):
        r = rankdata(values)
        coeffs, *_ = np.linalg.lstsq(design, r, rcond=None)
        residuals.append(r - design @ coeffs)
    return float(pearsonr(*residuals).statistic)


def star_key(star_id: str) -> str:
    """A star's name for matching across catalogues: upper case, no spaces (HD 2857 = HD2857)."""
    return "".join(star_id.upper().split())


def robust_sigma(values: np.ndarray) -> float:
    """The Gaussian σ from the median absolute deviation, blind to a few outliers."""
    return float(median_abs_deviation(values, scale="normal"))
