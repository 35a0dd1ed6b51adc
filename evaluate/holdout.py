"""Held-out reconstruction per survey: the model's fit against a per-survey PCA baseline.

The model: `Fitter.fit` (v for observed-frame spectra, latents, continuum) on every valid
pixel, χ²/dof = χ² / (n − D − 1). The baseline: PCA with as many components as latent
dimensions, fitted on the same survey's training spectra (flux / median, common pixel grid),
projecting a held-out spectrum by ivar-weighted least squares, χ²/dof = χ² / (n − D − 1).
Surveys without published errors are also given as fractional RMS.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
import torch
from sklearn.decomposition import PCA
from tqdm import tqdm

from stargon.core.spectrum import Spectrum
from stargon.evaluate.metrics import fractional_rms
from stargon.model.batch import make_batch
from stargon.model.fitter import Fitter
from stargon.model.refine import FitResult
from stargon.surveys.atmosphere import masked_ivar
from stargon.train.dataset import TrainingSet


def held_out_choice(
    dataset: TrainingSet, max_per_survey: int = 60, max_pixels: int = 20000
) -> dict[str, list[int]]:
    """The held-out spectra that are fitted, per survey: its first `max_per_survey` with at
    most `max_pixels` valid pixels."""
    by_survey: dict[str, list[int]] = defaultdict(list)
    for i in dataset.indices(held_out=True):
        by_survey[dataset.surveys[i]].append(int(i))
    chosen = {}
    for survey, indices in sorted(by_survey.items()):
        first = indices[:max_per_survey]
        chosen[survey] = [i for i in first if dataset.spectra[i].valid.sum() <= max_pixels]
    return chosen


def fit_held_out(
    fitter: Fitter, dataset: TrainingSet, max_per_survey: int = 60, max_pixels: int = 20000
) -> dict[str, list[tuple[int, FitResult]]]:
    """`Fitter.fit` of (up to `max_per_survey`) held-out spectra of every survey, in batches."""
    fits: dict[str, list[tuple[int, FitResult]]] = {}
    chosen = held_out_choice(dataset, max_per_survey, max_pixels)
    for survey, indices in tqdm(chosen.items(), desc="held-out fits", leave=False):
        results = fitter.fit([dataset.spectra[i] for i in indices])
        fits[survey] = list(zip(indices, results, strict=True))
    return fits


def evaluate_held_out(
    fitter: Fitter,
    dataset: TrainingSet,
    max_per_survey: int = 60,
    max_pixels: int = 20000,
    fits: dict[str, list[tuple[int, FitResult]]] | None = None,
) -> dict[str, dict]:
    """Median χ²/dof and fractional RMS per survey, model against PCA."""
    fits = fits or fit_held_out(fitter, dataset, max_per_survey, max_pixels)
    report = {}
    for survey, results in fits.items():
        model_chi2 = [result.chi2_dof for _, result in results]
        # over the modelled pixels: (the fit's fractional RMS, its span floor) per spectrum
        rms = [span_floor(fitter, dataset.spectra[i], r, _modelled(dataset.spectra[i]))
               for i, r in results]  # fmt: skip
        model_rms, span_rms = [a for a, _ in rms], [b for _, b in rms]
        train = [dataset.spectra[i] for i in dataset.indices() if dataset.surveys[i] == survey]
        held = [dataset.spectra[i] for i, _ in results]
        pca = pca_baseline(train, held, fitter.model.config.latent_dim)
        report[survey] = {
            "n_held_out": len(model_chi2),
            "model_chi2_dof": _median(model_chi2),
            "model_fractional_rms": _median(model_rms),
            "span_fractional_rms": _median(span_rms),
            "pca_chi2_dof": pca.get("chi2_dof"),
            "pca_fractional_rms": pca.get("fractional_rms"),
            "n_train": len(train),
            "has_errors": bool(train[0].has_errors) if train else None,
        }
    return report


def _modelled(spectrum: Spectrum) -> np.ndarray:
    """Which of a spectrum's valid pixels the model is asked to fit (the atmosphere masked)."""
    return masked_ivar(spectrum)[spectrum.valid] > 0


def span_floor(
    fitter: Fitter,
    spectrum: Spectrum,
    fit: FitResult,
    used: np.ndarray | None = None,
    extra: np.ndarray | None = None,
) -> tuple[float, float]:
    """(fractional RMS of a fit, fractional RMS of the best fit the decoder's span allows)
    over the `used` valid pixels (default: all): the spectrum fitted by least squares with any
    weights of the K+1 basis functions (and of `extra` functions at its valid pixels, (M, P)),
    at the fit's velocity and under its continuum polynomial. No latent can do better than the
    second number; when the fit is close to it, the number of basis functions limits the
    model, not its training or its latent MLP."""
    basis, _, polynomial = fit_parts(fitter, spectrum, fit)
    functions = basis if extra is None else np.vstack([basis, extra])
    used = np.ones(len(polynomial), bool) if used is None else used
    truth = spectrum.flux[spectrum.valid][used]
    design = (functions.T * polynomial[:, None])[used]
    weights, *_ = np.linalg.lstsq(design, truth, rcond=None)
    return (
        fractional_rms(truth, fit.model_flux[used]),
        fractional_rms(truth, design @ weights),
    )


def fit_parts(
    fitter: Fitter, spectrum: Spectrum, fit: FitResult
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fit at the spectrum's valid pixels taken apart (float64): the basis (K+1, P) at its
    velocity, the decoded spectrum f (P,) and the continuum polynomial (P,), model = poly · f."""
    model = fitter.model
    batch = make_batch([spectrum], v_kms=[fit.v_kms])
    with torch.no_grad():
        basis = model.basis(batch, fitter.pyramid)
        decoded = model.observe(torch.as_tensor(fit.z[None], dtype=basis.dtype), basis)
    basis, decoded = basis[:, 0].double().numpy(), decoded[0].double().numpy()
    return basis, decoded, fit.model_flux / decoded


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


class SurveyPCA:
    """PCA of one survey's spectra (flux / median on the first spectrum's pixels); held-out
    spectra are projected by ivar-weighted least squares on the mean and components."""

    def __init__(self, train: list[Spectrum], n_components: int):
        self.grid = train[0].wave
        self.n_components = n_components
        x, w = on_grid(train, self.grid)
        with warnings.catch_warnings():  # columns no training spectrum covers: filled with 1
            warnings.simplefilter("ignore", RuntimeWarning)
            column_median = np.nanmedian(np.where(w > 0, x, np.nan), axis=0)
        column_median = np.nan_to_num(column_median, nan=1.0)
        pca = PCA(n_components, random_state=0).fit(np.where(w > 0, x, column_median))
        self.basis = np.vstack([pca.mean_, pca.components_])  # (D+1, N)

    def project(self, spectra: list[Spectrum]) -> list[dict]:
        """Per spectrum: coefficients (D,), and on the grid: x, w, model and the valid mask."""
        out = []
        for x, w in zip(*on_grid(spectra, self.grid), strict=True):
            valid = w > 0
            a = self.basis[:, valid].T * np.sqrt(w[valid])[:, None]
            coeffs, *_ = np.linalg.lstsq(a, x[valid] * np.sqrt(w[valid]), rcond=None)
            out.append({"coeffs": coeffs[1:], "x": x, "w": w, "model": coeffs @ self.basis,
                        "valid": valid})  # fmt: skip
        return out


def pca_baseline(train: list[Spectrum], held_out: list[Spectrum], n_components: int) -> dict:
    """Median χ²/dof and fractional RMS of a per-survey PCA on held-out spectra."""
    if len(train) <= n_components + 1 or not held_out:
        return {}
    chi2, rms = [], []
    for p in SurveyPCA(train, n_components).project(held_out):
        valid = p["valid"]
        if valid.sum() <= n_components + 1:
            continue
        residual = p["x"][valid] - p["model"][valid]
        chi2.append(np.sum(p["w"][valid] * residual**2) / (valid.sum() - n_components - 1))
        rms.append(np.sqrt(np.mean(residual**2)))
    return {"chi2_dof": _median(chi2), "fractional_rms": _median(rms)}


def on_grid(spectra: list[Spectrum], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux / median and ivar × median² (atmosphere masked, as for the model), linearly
    resampled onto a common grid."""
    target = torch.as_tensor(grid)
    fluxes, ivars = [], []
    for s in spectra:
        scale = np.median(np.abs(s.flux[s.valid])) or 1.0
        flux, ivar = resample(
            torch.as_tensor(s.wave),
            torch.as_tensor(s.flux / scale),
            torch.as_tensor(masked_ivar(s) * scale**2),
            target,
        )
        fluxes.append(flux.numpy())
        ivars.append(ivar.numpy())
    return np.array(fluxes), np.array(ivars)


def resample(
    wave_in: torch.Tensor,
    flux_in: torch.Tensor,
    ivar_in: torch.Tensor,
    wave_out: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear interpolation onto `wave_out` with inverse variances propagated.

    f_out = (1-t) f_a + t f_b, var_out = (1-t)² var_a + t² var_b. An output pixel is masked
    (ivar 0) if it lies outside the input range or leans on a masked input pixel. Meant for
    output grids no coarser than the input; convolve with the LSF first when degrading.
    """
    n = wave_in.shape[-1]
    right = torch.searchsorted(wave_in.contiguous(), wave_out.contiguous()).clamp(1, n - 1)
    left = right - 1
    w_left = torch.gather(wave_in, -1, left)
    w_right = torch.gather(wave_in, -1, right)
    t = ((wave_out - w_left) / (w_right - w_left)).to(flux_in.dtype)
    inside = (wave_out >= wave_in[..., :1]) & (wave_out <= wave_in[..., -1:])

    f_left, f_right = _take(flux_in, left), _take(flux_in, right)
    i_left, i_right = _take(ivar_in, left), _take(ivar_in, right)
    flux_out = (1 - t) * f_left + t * f_right
    usable = inside & ((i_left > 0) | (t >= 1)) & ((i_right > 0) | (t <= 0))
    var = (1 - t) ** 2 * _safe_inverse(i_left) + t**2 * _safe_inverse(i_right)
    ivar_out = torch.where(usable, _safe_inverse(var), torch.zeros_like(var))
    return torch.where(inside, flux_out, torch.zeros_like(flux_out)), ivar_out


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather along the pixel axis, broadcasting a shared index over a batch of spectra."""
    if index.ndim < values.ndim:
        index = index.expand(*values.shape[:-1], index.shape[-1])
    return torch.gather(values, -1, index)


def _safe_inverse(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, 1.0 / x.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
