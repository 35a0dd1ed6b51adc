"""Held-out reconstruction per survey: the model's fit against a per-survey PCA baseline.

The model: `fit_spectrum` (v for observed-frame spectra, latents, continuum) on every valid
pixel, χ²/dof = χ² / (n − D − 1). The baseline: PCA with as many components as latent
dimensions, fitted on the same survey's training spectra (flux / median, common pixel grid),
projecting a held-out spectrum by ivar-weighted least squares, χ²/dof = χ² / (n − D − 1).
Surveys without published errors are also given as fractional RMS.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from sklearn.decomposition import PCA
from tqdm import tqdm

from stargon.model.fit import fit_spectrum, template_pyramid
from stargon.model.gon import StarGON
from stargon.model.physics import resample
from stargon.surveys.spectrum import Spectrum
from stargon.train.dataset import TrainingSet


def evaluate_held_out(
    model: StarGON,
    dataset: TrainingSet,
    prototypes: torch.Tensor | None = None,
    max_per_survey: int = 60,
    max_pixels: int = 20000,
) -> dict[str, dict]:
    with torch.no_grad():
        pyramid = model.decoder.pyramid()
    templates = template_pyramid(model, prototypes)
    by_survey: dict[str, list[int]] = defaultdict(list)
    for i in dataset.indices(held_out=True):
        by_survey[dataset.surveys[i]].append(int(i))
    report = {}
    for survey, indices in sorted(by_survey.items()):
        indices = indices[:max_per_survey]
        model_chi2, model_rms = [], []
        for i in tqdm(indices, desc=f"held-out {survey}", leave=False):
            spectrum = dataset.spectra[i]
            if spectrum.valid.sum() > max_pixels:
                continue
            result = fit_spectrum(model, spectrum, pyramid=pyramid, templates=templates)
            model_chi2.append(result.chi2_dof)
            model_rms.append(_fractional_rms(spectrum, result.model_flux))
        train = [dataset.spectra[i] for i in dataset.indices() if dataset.surveys[i] == survey]
        pca = pca_baseline(train, [dataset.spectra[i] for i in indices], model.config.latent_dim)
        report[survey] = {
            "n_held_out": len(model_chi2),
            "model_chi2_dof": _median(model_chi2),
            "model_fractional_rms": _median(model_rms),
            "pca_chi2_dof": pca.get("chi2_dof"),
            "pca_fractional_rms": pca.get("fractional_rms"),
            "n_train": len(train),
            "has_errors": bool(train[0].has_errors) if train else None,
        }
    return report


def _fractional_rms(spectrum: Spectrum, model_flux: np.ndarray) -> float:
    flux = spectrum.flux[spectrum.valid]
    return float(np.sqrt(np.mean((flux - model_flux) ** 2)) / np.median(np.abs(flux)))


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def pca_baseline(train: list[Spectrum], held_out: list[Spectrum], n_components: int) -> dict:
    """Median χ²/dof and fractional RMS of a per-survey PCA on held-out spectra."""
    if len(train) <= n_components + 1 or not held_out:
        return {}
    grid = train[0].wave
    x_train, w_train = _on_grid(train, grid)
    fill = np.where(w_train > 0, x_train, np.nan)
    column_median = np.nan_to_num(np.nanmedian(fill, axis=0), nan=1.0)
    x_filled = np.where(w_train > 0, x_train, column_median)
    pca = PCA(n_components).fit(x_filled)
    basis = np.vstack([pca.mean_, pca.components_])  # (D+1, N)
    x_test, w_test = _on_grid(held_out, grid)
    chi2, rms = [], []
    for x, w in zip(x_test, w_test, strict=True):
        valid = w > 0
        if valid.sum() <= n_components + 1:
            continue
        a = basis[:, valid].T * np.sqrt(w[valid])[:, None]
        b = x[valid] * np.sqrt(w[valid])
        coeffs, *_ = np.linalg.lstsq(a, b, rcond=None)
        model = coeffs @ basis[:, valid]
        chi2.append(np.sum(w[valid] * (x[valid] - model) ** 2) / (valid.sum() - n_components - 1))
        rms.append(np.sqrt(np.mean((x[valid] - model) ** 2)))
    return {"chi2_dof": _median(chi2), "fractional_rms": _median(rms)}


def _on_grid(spectra: list[Spectrum], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux / median and ivar × median², linearly resampled onto a common grid."""
    target = torch.as_tensor(grid)
    fluxes, ivars = [], []
    for s in spectra:
        scale = np.median(np.abs(s.flux[s.valid])) or 1.0
        flux, ivar = resample(
            torch.as_tensor(s.wave),
            torch.as_tensor(s.flux / scale),
            torch.as_tensor(s.ivar * scale**2),
            target,
        )
        fluxes.append(flux.numpy())
        ivars.append(ivar.numpy())
    return np.array(fluxes), np.array(ivars)
