"""The report's measurements, each with the baseline it is judged against (same run)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from scipy.stats import ks_2samp, spearmanr
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import roc_auc_score

from stargon.assets import line_list
from stargon.core.physics import observed_to_rest
from stargon.core.spectrum import Spectrum
from stargon.evaluate.anomalies import ANOMALIES, H_ALPHA
from stargon.evaluate.context import Evaluation
from stargon.evaluate.holdout import (
    SurveyPCA,
    evaluate_held_out,
    held_out_choice,
    on_grid,
    span_floor,
)
from stargon.evaluate.injection import inject
from stargon.evaluate.metrics import (
    c2st_accuracy,
    c2st_column_weights,
    fractional_rms,
    probe_rmse,
    robust_sigma,
    star_key,
)
from stargon.evaluate.sensitivity import latent_sensitivity, rest_grid, sensitive_regions
from stargon.model.batch import make_batch
from stargon.model.continuum import solve_continuum
from stargon.model.directions import LabelDirections, line_response
from stargon.model.fitter import Fitter
from stargon.model.prior import LatentPrior
from stargon.model.pseudo_continuum import pseudo_continuum
from stargon.model.refine import FitResult
from stargon.surveys.atmosphere import masked_ivar
from stargon.train.dataset import SYNTHETIC_SURVEY

Fits = dict[str, list[tuple[int, FitResult]]]
LABELS = ("teff", "logg", "fe_h")
CATASTROPHIC_KMS = 50.0
DECISIVE_DELTA_CHI2 = 25.0  # 5σ for one parameter, in units of the better fit's χ²/dof


def reconstruction(ev: Evaluation, max_per_survey: int) -> tuple[dict, Fits]:
    """Held-out χ²/dof (and fractional RMS) per survey against a per-survey PCA."""
    chosen = held_out_choice(ev.dataset, max_per_survey)
    fits = {survey: list(zip(indices, ev.fit(indices), strict=True))
            for survey, indices in chosen.items()}  # fmt: skip
    return evaluate_held_out(ev.fitter, ev.dataset, fits=fits), fits


def label_probes(ev: Evaluation, survey: str = "miles") -> dict:
    """Linear and kNN probes of Teff, logg, [Fe/H] from latents vs from PCA coefficients,
    fitted on training stars and scored on held-out stars."""
    spectra = ev.dataset.spectra
    idx = np.array([i for i in ev.members(survey) if all(k in spectra[i].labels for k in LABELS)])
    if idx.size == 0:
        return {"survey": survey, "rows": [], "note": "no labelled spectra"}
    y = {k: np.array([spectra[i].labels[k] for i in idx]) for k in LABELS}
    y["log_teff"] = np.log10(y["teff"])
    held = ev.dataset.held_out[idx]
    pca = SurveyPCA([spectra[i] for i in idx[~held]], ev.model.config.latent_dim)
    features = {
        "latents": ev.whitened[idx],
        "pca": np.array([p["coeffs"] for p in pca.project([spectra[i] for i in idx])]),
    }
    subsets = {"3500–8000 K": (y["teff"] >= 3500) & (y["teff"] <= 8000), "all": np.ones_like(held)}
    rows, predictions = [], {}
    for subset, inside in subsets.items():
        train, test = inside & ~held, inside & held
        for label, values in y.items():
            for kind in ("linear", "knn"):
                row = {
                    "subset": subset,
                    "label": label,
                    "probe": kind,
                    "n_train": int(train.sum()),
                    "n_test": int(test.sum()),
                }
                for name, x in features.items():
                    rmse, predicted = probe_rmse(
                        kind, x[train], values[train], x[test], values[test]
                    )
                    row[f"{name}_rmse"] = rmse
                    predictions[(subset, label, kind, name)] = (values[test], predicted)
                rows.append(row)
    correlation = np.array(
        [
            [spearmanr(z_k, y[label]).statistic for label in ("log_teff", "logg", "fe_h")]
            for z_k in ev.whitened[idx].T
        ]
    )
    return {"survey": survey, "rows": rows, "predictions": predictions, "correlation": correlation}


def emulator_fidelity(ev: Evaluation, fits: Fits) -> dict:
    """Held-out noiseless emulator spectra: mean |model − truth| in normalised flux (PCA in
    the same run), and a linear probe from latents to the labels that made them."""
    results = fits.get(SYNTHETIC_SURVEY, [])
    if not results:
        return {}
    spectra = ev.dataset.spectra
    mae = [np.mean(np.abs(spectra[i].flux[spectra[i].valid] - r.model_flux)) for i, r in results]
    span = np.array([span_floor(ev.fitter, spectra[i], r) for i, r in results])
    train_idx = ev.members(SYNTHETIC_SURVEY, held_out=False)
    held_idx = np.array([i for i, _ in results])
    pca = SurveyPCA([spectra[i] for i in train_idx], ev.model.config.latent_dim)
    pca_mae = [
        np.mean(np.abs(p["x"] - p["model"])[p["valid"]])
        for p in pca.project([spectra[i] for i in held_idx])
    ]
    probes = {}
    for name in spectra[held_idx[0]].labels:
        truth_train = np.array([spectra[i].labels[name] for i in train_idx])
        truth_held = np.array([spectra[i].labels[name] for i in held_idx])
        rmse, _ = probe_rmse(
            "linear", ev.latents[train_idx], truth_train, ev.latents[held_idx], truth_held
        )
        probes[name] = rmse
    return {
        "n_held_out": len(results),
        "model_mae": float(np.mean(mae)),
        "model_mae_median": float(np.median(mae)),
        "pca_mae": float(np.mean(pca_mae)),
        "model_frac_rms": float(np.mean(span[:, 0])),
        "span_frac_rms": float(np.mean(span[:, 1])),
        "label_probe_rmse": probes,
    }


def rv_against_catalogue(ev: Evaluation, fits: Fits) -> list[dict]:
    """Fitted v − catalogue RV for observed-frame spectra that have one: scan for all, and the
    full fit for the held-out ones."""
    refined = {i: r.v_kms for results in fits.values() for i, r in results}
    rows = []
    for survey in ev.survey_names:
        idx = [
            i
            for i in ev.members(survey)
            if ev.dataset.spectra[i].frame == "observed"
            and abs(ev.dataset.spectra[i].labels.get("rv", np.nan)) < 1000
        ]
        if not idx:
            continue
        catalogue = np.array([ev.dataset.spectra[i].labels["rv"] for i in idx])
        full_fit = np.array([refined.get(i, np.nan) for i in idx])
        for stage, fitted in (
            ("scan (all)", ev.velocities[idx]),
            ("full fit (held-out)", full_fit),
        ):
            delta = fitted - catalogue
            delta = delta[np.isfinite(delta)]
            if delta.size == 0:
                continue
            good = np.abs(delta) < CATASTROPHIC_KMS
            rows.append(
                {
                    "survey": survey,
                    "stage": stage,
                    "n": int(delta.size),
                    "bias_kms": float(np.median(delta[good])) if good.any() else np.nan,
                    "scatter_kms": robust_sigma(delta[good]) if good.any() else np.nan,
                    "catastrophic": int((~good).sum()),
                    "catalogue": catalogue.tolist() if stage.startswith("scan") else None,
                    "fitted": fitted.tolist() if stage.startswith("scan") else None,
                    "indices": idx if stage.startswith("scan") else None,
                }
            )
    return rows


def velocity_preference(
    fitter: Fitter, spectra: list[Spectrum], other_kms: np.ndarray
) -> list[dict]:
    """Which velocity the data prefer: the fit's own (v free) or `other_kms` (a catalogue's).
    The spectrum is fitted held at each, latents and continuum free: the same descent at both.
    They are compared by what the fits minimise, −2 ln posterior = χ² + zᵀΛz (χ² alone would
    favour the fit that strays further from the prior), as Δ in units of the better fit's
    χ²/dof, so that errors over- or under-stated by a common factor do not decide.
    |Δ| ≥ `DECISIVE_DELTA_CHI2` is decisive; positive: the data prefer the fit's velocity."""
    found = [result.v_kms for result in fitter.fit(spectra, fit_velocity=True)]
    at_fit = fitter.fit(spectra, velocities=found)
    held = fitter.fit(spectra, velocities=other_kms)
    rows = []
    for ours, theirs, v_other in zip(at_fit, held, other_kms, strict=True):
        delta = _minus_two_ln_posterior(fitter, theirs) - _minus_two_ln_posterior(fitter, ours)
        delta /= min(ours.chi2_dof, theirs.chi2_dof)
        rows.append(
            {
                "v_fit_kms": ours.v_kms,
                "v_other_kms": float(v_other),
                "chi2_dof_fit": ours.chi2_dof,
                "chi2_dof_other": theirs.chi2_dof,
                "delta_chi2": float(delta),
                "prefer": "fit" if delta >= DECISIVE_DELTA_CHI2
                else "other" if delta <= -DECISIVE_DELTA_CHI2 else "neither",
            }
        )  # fmt: skip
    return rows


def _minus_two_ln_posterior(fitter: Fitter, result: FitResult) -> float:
    """χ² + zᵀΛz of a fit (the χ² from its χ²/dof and degrees of freedom)."""
    dof = max(result.n_pix - result.z.size - 1, 1)
    prior = fitter.model.prior_term(torch.as_tensor(result.z, dtype=torch.float64))
    return result.chi2_dof * dof + float(prior)


def catastrophic_velocities(ev: Evaluation, rows: list[dict]) -> list[dict]:
    """Each scan-stage catastrophic velocity of `rv_against_catalogue`, with the full fit's
    velocity, whether the catalogue gave the star an RV error (a LAMOST pipeline that fitted
    no stellar parameters gives none) and which velocity its pixels prefer
    (`velocity_preference`)."""
    found = []
    for row in rows:
        if not row["stage"].startswith("scan") or not row["catastrophic"]:
            continue
        catalogue, fitted = np.array(row["catalogue"]), np.array(row["fitted"])
        bad = np.flatnonzero(np.abs(fitted - catalogue) >= CATASTROPHIC_KMS)
        spectra = [ev.dataset.spectra[row["indices"][k]] for k in bad]
        verdicts = velocity_preference(ev.fitter, spectra, catalogue[bad])
        for spectrum, v_scan, verdict in zip(spectra, fitted[bad], verdicts, strict=True):
            error = spectrum.labels.get("rv_err")
            found.append(
                {"survey": row["survey"], "star": spectrum.star_id,
                 "catalogue_rv_err": np.nan if error is None else float(error),
                 "v_scan_kms": float(v_scan)} | verdict
            )  # fmt: skip
    return found


INJECTION_SETTINGS = {
    "MILES-like (S/N 50)": ("miles", 50.0),
    "APOGEE-like (S/N 100)": ("apogee_dr17", 100.0),
}


def rv_injection(ev: Evaluation, trials: int = 40, seed: int = 0) -> list[dict]:
    """Real rest-frame spectra moved to v ~ U(−500, 500) km/s with noise, fitted blind."""
    rows = []
    for name, (survey, snr) in INJECTION_SETTINGS.items():
        pool = [i for i in ev.members(survey) if ev.dataset.spectra[i].frame == "rest"]
        if not pool:
            continue
        rng = np.random.default_rng(seed)
        v_true, injected = [], []
        for _ in range(trials):
            v_true.append(rng.uniform(-500, 500))
            star = ev.dataset.spectra[pool[rng.integers(len(pool))]]
            injected.append(inject(star, v_true[-1], snr, rng))
        results = ev.fitter.fit(injected)
        delta = np.array([r.v_kms for r in results]) - np.array(v_true)
        sigma = [r.v_err_kms for r in results]
        good = np.abs(delta) < CATASTROPHIC_KMS
        rows.append(
            {
                "setting": name,
                "trials": trials,
                "bias_kms": float(np.median(delta[good])),
                "scatter_kms": robust_sigma(delta[good]),
                "median_sigma_v_kms": float(np.median(sigma)),
                "catastrophic": int((~good).sum()),
            }
        )
    return rows


def cross_instrument(ev: Evaluation, pair: tuple[str, str] = ("miles", "stelib")) -> list[dict]:
    """Encode a star from one instrument, predict its spectrum on the other (its pixels, its
    resolution; continuum fitted) — against a ridge regression between the two PCAs."""
    index = {s: {star_key(ev.dataset.spectra[i].star_id): i for i in ev.members(s)} for s in pair}
    shared = sorted(set(index[pair[0]]) & set(index[pair[1]]))
    rows = []
    for source, target in (pair, pair[::-1]):
        held = [k for k in shared if ev.dataset.held_out[index[source][k]]]
        train = [k for k in shared if not ev.dataset.held_out[index[source][k]]]
        if not held or len(train) <= ev.model.config.latent_dim:
            continue
        spectra = ev.dataset.spectra
        source_train = [spectra[i] for i in ev.members(source, held_out=False)]
        pca = SurveyPCA(source_train, ev.model.config.latent_dim)
        grid = spectra[index[target][train[0]]].wave
        x_train, _ = on_grid([spectra[index[target][k]] for k in train], grid)
        pairs = pca.project([spectra[index[source][k]] for k in train])
        coeffs = np.array([p["coeffs"] for p in pairs])
        regression = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(coeffs, x_train)
        model_rms, pca_rms = [], []
        fitted = ev.fit([index[source][k] for k in held])
        for k, result in zip(held, fitted, strict=True):
            observed = spectra[index[target][k]]
            batch = make_batch([observed])
            with torch.no_grad():
                full, _ = ev.model.model_flux(
                    torch.as_tensor(result.z[None]), ev.model.basis(batch, ev.fitter.pyramid),
                    batch,
                )  # fmt: skip
            (held_coeffs,) = [p["coeffs"] for p in pca.project([spectra[index[source][k]]])]
            predicted = regression.predict(held_coeffs[None])[0]
            on_pixels = np.interp(batch.wave[0].numpy(), grid, predicted)
            shape = torch.as_tensor(on_pixels[None], dtype=batch.flux.dtype)
            baseline = solve_continuum(batch.design, batch.flux, batch.ivar, shape) * shape
            valid = batch.ivar[0] > 0
            flux = batch.flux[0][valid].numpy()
            model_rms.append(fractional_rms(flux, full[0][valid].numpy()))
            pca_rms.append(fractional_rms(flux, baseline[0][valid].numpy()))
        rows.append(
            {
                "from": source,
                "to": target,
                "n_held_out_stars": len(held),
                "n_train_pairs": len(train),
                "model_fractional_rms": float(np.median(model_rms)),
                "pca_regression_fractional_rms": float(np.median(pca_rms)),
            }
        )
    return rows


def realism(
    ev: Evaluation, min_spectra: int = 200, max_real: int = 200, seed: int = 0
) -> list[dict]:
    """Per survey with > min_spectra spectra: samples from a density fitted to that survey's
    training latents, seen at real spectra's pixels, R, v and noise, against real spectra —
    classifier two-sample tests and the depths of strong lines.

    The C2ST is run three ways, so that it says whether the decoder or the latent density
    fails: real against samples, real against each star's own reconstruction (its one-step
    latent and its fitted MAP latent, decoded with the same noise), and reconstructions
    against samples. Each compares the pixels the model is asked to model (no atmosphere band
    or segment edge in any of the stars); real against samples is also given on the masked
    pixels alone, which a stellar model does not generate."""
    rows = []
    for survey in ev.survey_names:
        members = ev.members(survey)
        if members.size <= min_spectra:
            continue
        held = ev.members(survey, held_out=True)
        real_idx = held if held.size >= 50 else members
        real_idx = np.random.default_rng(seed).permutation(real_idx)[:max_real]
        prior = LatentPrior.fit(ev.latents[ev.members(survey, held_out=False)])
        z = torch.as_tensor(prior.sample(real_idx.size, seed=seed + 1), dtype=torch.float32)
        fitted = ev.fit(real_idx)
        latents = {
            "one-step": torch.as_tensor(ev.latents[real_idx], dtype=torch.float32),
            "fitted": torch.as_tensor(np.array([r.z for r in fitted]), dtype=torch.float32),
        }
        rngs = {name: np.random.default_rng(seed + k)
                for k, name in enumerate(("generated", *latents), start=2)}  # fmt: skip
        first = ev.dataset.spectra[real_idx[0]]
        grid = first.wave[first.valid]
        named = {"generated": z, **latents}
        models = ev.decode_many(
            [ev.dataset.spectra[i] for i in real_idx], ev.velocities[real_idx].tolist(),
            torch.stack(list(named.values()), dim=1),
        )  # fmt: skip
        sets = defaultdict(list)
        for i, model in zip(real_idx, models, strict=True):
            rest, real, continuum = _normalised_real(ev, int(i))
            sets["real"].append(np.interp(grid, rest, real))
            sets["modelled"].append(np.interp(grid, rest, _modelled(ev, int(i))) > 0.999)
            draws = [rngs[name] for name in named]
            decoded = _normalised_models(ev.dataset.spectra[i], model, draws, continuum)
            for name, values in zip(named, decoded, strict=True):
                sets[name].append(np.interp(grid, rest, values))
        x = {name: np.array(values) for name, values in sets.items()}
        modelled = x.pop("modelled").all(axis=0)
        tests = {
            "c2st_accuracy": ("real", "generated", modelled),
            "c2st_real_vs_reconstruction": ("real", "one-step", modelled),
            "c2st_real_vs_fitted": ("real", "fitted", modelled),
            "c2st_reconstruction_vs_samples": ("one-step", "generated", modelled),
            "c2st_masked_pixels": ("real", "generated", ~modelled),
        }
        scores = {
            name: c2st_accuracy(x[a][:, columns], x[b][:, columns], seed=seed)
            if columns.sum() > 10 else (None, None)
            for name, (a, b, columns) in tests.items()
        }  # fmt: skip
        difference = (x["real"] - x["one-step"]).mean(0) * modelled
        looked_at = {
            f"c2st_{name}_features": _classifier_features(
                grid[modelled], x["real"][:, modelled], x[other][:, modelled], seed
            )
            for name, other in (("samples", "generated"), ("fitted", "fitted"))
        }
        rows.append(
            {
                "survey": survey,
                "real_from": "held-out" if held.size >= 50 else "all",
                "n_real": int(real_idx.size),
                **{name: accuracy for name, (accuracy, _) in scores.items()},
                "c2st_std": scores["c2st_accuracy"][1],
                "modelled_share": float(modelled.mean()),
                "largest_differences_a": [
                    float(grid[k]) for k in np.argsort(-np.abs(difference))[:5]
                ],
                **looked_at,
                "line_depths": _line_depths(grid, x["real"], x["generated"], first),
                "grid": grid,
                "real": x["real"],
                "generated": x["generated"],
            }
        )
    return rows


def _classifier_features(
    wave: np.ndarray, real: np.ndarray, other: np.ndarray, seed: int
) -> list[dict]:
    """The five wavelengths the C2ST's classifier leans on most (peaks of its column weights,
    300 km/s apart), each with the listed line within 150 km/s, if any."""
    weights = c2st_column_weights(real, other, seed=seed)
    return [
        {"wavelength": r.wavelength, "line": r.line.name if r.line else None}
        for r in sensitive_regions(wave, weights)
    ]


def _modelled(ev: Evaluation, i: int) -> np.ndarray:
    """1 at the valid pixels the model is asked to fit (atmosphere bands and segment edges
    masked), 0 elsewhere."""
    spectrum: Spectrum = ev.dataset.spectra[i]
    return (masked_ivar(spectrum)[spectrum.valid] > 0).astype(float)


def _normalised_real(ev: Evaluation, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rest λ, real flux / its pseudo-continuum, that continuum) at the valid pixels."""
    spectrum: Spectrum = ev.dataset.spectra[i]
    wave, flux = spectrum.wave[spectrum.valid], spectrum.flux[spectrum.valid]
    continuum = noisy_continuum(wave, flux)
    return observed_to_rest(wave, float(ev.velocities[i])), flux / continuum, continuum


def _normalised_models(
    spectrum: Spectrum, models: np.ndarray, rngs: list, continuum: np.ndarray
) -> list[np.ndarray]:
    """Models (M, n_valid) decoded at the spectrum's valid pixels, each given the star's noise
    (its σ over its pseudo-continuum `continuum`; the m-th drawn from rngs[m]) and divided by
    its own pseudo-continuum: normalised as the real star is."""
    wave = spectrum.wave[spectrum.valid]
    sigma = 1.0 / np.sqrt(spectrum.ivar[spectrum.valid]) / continuum
    out = []
    for model, rng in zip(models, rngs, strict=True):
        noisy = model + rng.normal(0.0, 1.0, model.size) * sigma
        out.append(noisy / noisy_continuum(wave, noisy))
    return out


def noisy_continuum(wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """A model-free continuum applied identically to real and generated (noisy) spectra: the
    running 90th percentile over 9,000 km/s (0.03 in ln λ), smoothed."""
    return pseudo_continuum(wave, flux, window_kms=9000.0, percentile=90)


DEPTH_LINES = ("Ca II K", "Hδ", "Hβ", "Mg b2", "Na D2", "Hα", "Ca II 8544", "Br11", "Mg I 15753")


def _line_depths(grid, real_x, generated_x, spectrum: Spectrum) -> list[dict]:
    """1 − mean normalised flux within ±FWHM of each strong line inside the grid."""
    resolving = float(np.median(spectrum.resolving_power))
    out = []
    for line in line_list():
        if line.name not in DEPTH_LINES or not grid[0] < line.wavelength < grid[-1]:
            continue
        half = max(line.wavelength / resolving, 1.0)
        window = np.abs(grid - line.wavelength) <= half
        if window.sum() < 2:
            continue
        real = 1 - real_x[:, window].mean(1)
        generated = 1 - generated_x[:, window].mean(1)
        out.append(
            {
                "line": line.name,
                "real_median": float(np.median(real)),
                "generated_median": float(np.median(generated)),
                "ks_p": float(ks_2samp(real, generated).pvalue),
                "real": real,
                "generated": generated,
            }
        )
    return out


def sensitivity(ev: Evaluation, n_latents_sampled: int = 64, seed: int = 0) -> dict:
    """Mean |∂f/∂w_k| (whitened directions) over training latents on a rest grid (R = 5,000),
    and each direction's strongest regions matched to the line list."""
    rng = np.random.default_rng(seed)
    real = [i for i in ev.dataset.indices(held_out=False) if not ev.dataset.spectra[i].synthetic]
    chosen = rng.choice(real, min(n_latents_sampled, len(real)), replace=False)
    wave = rest_grid()
    values = latent_sensitivity(
        ev.fitter, torch.as_tensor(ev.latents[chosen]), wave, directions=ev.whitening.matrix
    )
    regions = {k: sensitive_regions(wave, values[k]) for k in range(values.shape[0])}
    return {"wave": wave, "values": values, "regions": regions}


def latent_map(ev: Evaluation) -> dict:
    """A 2-D PCA projection of every spectrum's latent, with labels where a catalogue has them."""
    xy = PCA(2, random_state=0).fit_transform(ev.whitened)
    labels = {k: np.array([s.labels.get(k, np.nan) for s in ev.dataset.spectra]) for k in LABELS}
    return {"xy": xy, "labels": labels, "surveys": np.array(ev.dataset.surveys)}


DIRECTION_SETS = {"miles": LABELS, SYNTHETIC_SURVEY: (*LABELS, "alpha_fe")}
DIRECTION_STEPS = {"teff": 500.0, "logg": 0.5, "fe_h": 0.5, "alpha_fe": 0.2}


def label_directions(ev: Evaluation) -> list[dict]:
    """Per labelled survey: label directions fitted on its training stars' whitened one-step
    latents (MILES within 3,500–8,000 K, as the probes), and for each label the depth change
    of every listed line in the survey's range for one step along it (DIRECTION_STEPS), at the
    typical latent of the stars' mean labels and the survey's median R."""
    rows = []
    for survey, names in DIRECTION_SETS.items():
        stars = [i for i in ev.members(survey, held_out=False)
                 if all(k in ev.dataset.spectra[i].labels for k in names)]  # fmt: skip
        labels = np.array([[ev.dataset.spectra[i].labels[k] for k in names] for i in stars])
        if survey == "miles" and len(stars):
            inside = (labels[:, 0] >= 3500) & (labels[:, 0] <= 8000)
            stars, labels = [i for i, ok in zip(stars, inside, strict=True) if ok], labels[inside]
        if len(stars) <= 2 * len(names):
            continue
        directions = LabelDirections.fit(ev.whitened[stars], labels, names)
        spectrum = ev.dataset.spectra[stars[0]]
        span = observed_to_rest(spectrum.wave[spectrum.valid][[0, -1]], ev.velocities[stars[0]])
        resolving = float(np.median(spectrum.resolving_power))
        for name in names:
            step = DIRECTION_STEPS[name]
            move = step * directions.direction(name)
            lines = line_response(
                ev.fitter, ev.whitening, directions.typical(), move, tuple(span), resolving
            )
            rows.append({
                "survey": survey, "label": name, "step": step, "n_stars": len(stars),
                "resolving_power": resolving,
                "lines": [{"line": r.line.name, "species": r.line.species, "depth": r.depth,
                           "change": r.change} for r in lines],
            })  # fmt: skip
    return rows


def outlier_injection(ev: Evaluation, max_per_survey: int, seed: int = 0) -> dict:
    """The outlier score on held-out real stars and on anomalies made from them
    (evaluate/anomalies.py). Per anomaly kind, one per 19 clean stars is mixed in (5 % of the
    pool), and the top 5 % of the pool by score is flagged: precision and recall there, and
    the ROC AUC of injected against clean."""
    reference = ev.release.outliers
    if reference is None:
        return {"note": "the release carries no outlier reference (released before the score)"}
    chosen = held_out_choice(ev.dataset, max_per_survey)
    clean = [i for survey, indices in chosen.items() if survey != SYNTHETIC_SURVEY
             for i in indices if _covers(ev.dataset.spectra[i], H_ALPHA)]  # fmt: skip
    clean_scores = reference.score_fits([ev.dataset.spectra[i] for i in clean], ev.fit(clean))
    rng = np.random.default_rng(seed)
    n_injected = max(3, int(np.ceil(len(clean) / 19)))
    rows = []
    for kind, make in ANOMALIES.items():
        bases = rng.choice(clean, n_injected, replace=False)
        made = [make(ev.dataset.spectra[i], float(ev.velocities[i]), rng) for i in bases]
        injected = reference.score_fits(made, ev.fitter.fit(made))
        pool = np.concatenate([clean_scores.outlier_score, injected.outlier_score])
        truth = np.r_[np.zeros(len(clean)), np.ones(n_injected)]
        flagged = np.argsort(-pool)[: int(np.ceil(0.05 * len(pool)))]
        hits = truth[flagged].sum()
        rows.append({
            "anomaly": kind, "n_clean": len(clean), "n_injected": n_injected,
            "precision_top5": hits / len(flagged), "recall_top5": hits / n_injected,
            "roc_auc": float(roc_auc_score(truth, pool)),
            "median_score": float(np.median(injected.outlier_score)),
            "median_latent_excess": float(np.median(injected.latent_excess)),
            "median_fit_excess": float(np.median(injected.fit_excess)),
        })  # fmt: skip
    summary = {f"clean_median_{name}": float(np.median(getattr(clean_scores, name)))
               for name in ("outlier_score", "latent_excess", "fit_excess")}  # fmt: skip
    return {"rows": rows} | summary


def _covers(spectrum: Spectrum, wave: float) -> bool:
    valid = spectrum.wave[spectrum.valid]
    return bool(valid[0] + 50 < wave < valid[-1] - 50)
