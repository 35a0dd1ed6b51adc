"""Do the latents describe the star, not its noise? The report's invariance measurements.

All latents here are whitened (the checkpoint's readable frame: unit variance over training
stars), so distances and shifts are in units of the training spread or of a fit's own σ_z.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import torch

from stargon.evaluate.context import Evaluation
from stargon.evaluate.injection import inject
from stargon.evaluate.metrics import partial_spearman, robust_sigma, star_key
from stargon.surveys.atmosphere import widened_bands
from stargon.surveys.instruments import instrument, instrument_of

LABELS = ("teff", "logg", "fe_h")
DEGRADED_SNR = (100.0, 30.0, 10.0)
FLUX_RANGE = (-0.05, 1.2)  # where normalised flux of a real star lies
SAMPLE_INSTRUMENTS = ("miles", "lamost", "galah", "apogee")


def snr_correlation(ev: Evaluation, min_spectra: int = 20) -> list[dict]:
    """Per survey of real spectra: Spearman(S/N, |w|) of the one-step latents, and the partial
    correlation given Teff, log g, [Fe/H] where every spectrum has them."""
    size = np.linalg.norm(ev.whitened, axis=1)
    rows = []
    for survey in ev.survey_names:
        members = ev.members(survey)
        spectra = [ev.dataset.spectra[i] for i in members]
        if members.size < min_spectra or spectra[0].synthetic:
            continue
        snr = np.array([s.median_snr() for s in spectra])
        row = {"survey": survey, "n": int(members.size), "partial_given_labels": None,
               "spearman": partial_spearman(snr, size[members])}  # fmt: skip
        labelled = np.array([all(k in s.labels for k in LABELS) for s in spectra])
        if labelled.sum() >= min_spectra:
            chosen = [s for s, ok in zip(spectra, labelled, strict=True) if ok]
            labels = np.array([[s.labels[k] for k in LABELS] for s in chosen])
            row["partial_given_labels"] = partial_spearman(
                snr[labelled], size[members][labelled], labels
            )
            row["n_labelled"] = int(labelled.sum())
        rows.append(row)
    return rows


def degradation(ev: Evaluation, survey: str = "miles", n_stars: int = 30, seed: int = 0) -> dict:
    """The same spectra with noise added to S/N 100, 30, 10 and fitted (latents, continuum):
    the latent shift from S/N 100 in units of the degraded fit's own σ_z, and how σ_z grows."""
    rng = np.random.default_rng(seed)
    bright = [i for i in ev.members(survey) if ev.dataset.spectra[i].median_snr() >= 100]
    chosen = rng.permutation(bright)[:n_stars]
    degraded = [(snr, inject(ev.dataset.spectra[i], 0.0, snr, rng))
                for i in chosen for snr in DEGRADED_SNR]  # fmt: skip
    results = ev.fitter.fit([spectrum for _, spectrum in degraded], fit_velocity=False)
    fits = defaultdict(list)
    for (snr, _), result in zip(degraded, results, strict=True):
        w = ev.whitening.whiten(result.z)
        sigma = np.sqrt(np.diag(ev.whitening.whiten_covariance(result.z_cov)))
        fits[snr].append((w, sigma))
    rows = []
    for snr in DEGRADED_SNR:
        pairs = zip(fits[snr], fits[100.0], strict=True)
        shift = [np.median(np.abs(w - w0) / s) for (w, s), (w0, _) in pairs]
        rows.append({"snr": snr, "median_sigma_w": float(np.median([s for _, s in fits[snr]])),
                     "median_shift_in_sigma": float(np.median(shift))})  # fmt: skip
    return {"survey": survey, "n_stars": len(chosen), "rows": rows}


def repeat_visits(ev: Evaluation, survey: str = "lamost_dr8", seed: int = 0) -> dict:
    """Stars observed more than once: their fitted latents' distance against random pairs of
    different stars, and the radial-velocity difference between visits."""
    groups = defaultdict(list)
    for i in ev.members(survey):
        groups[ev.dataset.spectra[i].star_id].append(i)
    repeated = {k: v for k, v in groups.items() if len(v) > 1}
    if not repeated:
        return {}
    visits = sorted(i for v in repeated.values() for i in v)
    results = ev.fit(visits)
    fitted = {i: (ev.whitening.whiten(r.z), r.v_kms) for i, r in zip(visits, results, strict=True)}
    same, dv = [], []
    for members in repeated.values():
        for a, b in itertools.combinations(members, 2):
            same.append(np.linalg.norm(fitted[a][0] - fitted[b][0]))
            dv.append(fitted[a][1] - fitted[b][1])
    rng = np.random.default_rng(seed)
    keys = list(fitted)
    star = {i: ev.dataset.spectra[i].star_id for i in keys}
    random = []
    while len(random) < 20 * len(same):
        a, b = rng.choice(keys, 2, replace=False)
        if star[a] != star[b]:
            random.append(np.linalg.norm(fitted[a][0] - fitted[b][0]))
    dv = np.array(dv)
    return {
        "survey": survey,
        "n_stars": len(repeated),
        "n_pairs": len(same),
        "same_star_distance": float(np.median(same)),
        "random_pair_distance": float(np.median(random)),
        "distance_ratio": float(np.median(same) / np.median(random)),
        "rv_difference_scatter_kms": robust_sigma(dv),
        "rv_difference_over_20_kms": int((np.abs(dv) > 20).sum()),
    }


def sensitivity_peaks(regions: dict, margin_kms: float = 150.0) -> dict:
    """Of each latent's strongest regions: the share within 150 km/s of a known stellar line,
    and how many lie inside an atmosphere band (widened as for rest-frame spectra)."""
    bands = widened_bands(margin_kms)
    per_latent, in_bands = [], 0
    for k, found in regions.items():
        on_line = [r.line is not None for r in found]
        per_latent.append({"latent": int(k), "on_lines": float(np.mean(on_line)) if found else 0.0})
        in_bands += sum(any(lo <= r.wavelength <= hi for lo, hi in bands) for r in found)
    shares = [r["on_lines"] for r in per_latent]
    return {
        "per_latent": per_latent,
        "median_share_on_lines": float(np.median(shares)),
        "latents_at_least_70_percent": int(sum(s >= 0.7 for s in shares)),
        "n_latents": len(shares),
        "peaks_in_atmosphere_bands": int(in_bands),
    }


def prior_samples(ev: Evaluation, n: int = 100, seed: int = 0) -> list[dict]:
    """n latents drawn from the release's density for each instrument's view, decoded
    (normalised, rest frame) on its pixels: the share of pixels whose flux lies in a star's
    range, beside the same share for up to n real spectra of the instrument normalised the
    same way."""
    if ev.prior is None:
        return []
    rows = []
    for name in SAMPLE_INSTRUMENTS:
        prior = ev.release.prior_for(name)
        z = torch.as_tensor(prior.sample(n, seed=seed), dtype=torch.float32)
        wave = instrument(name).pixels()
        resolving_power = instrument(name).resolving_power_at(wave)
        with torch.no_grad():
            basis = ev.model.observation_basis(
                torch.as_tensor(wave), 0.0, torch.as_tensor(resolving_power),
                ev.fitter.pyramid,
            )  # fmt: skip
            flux = ev.model.observe(z, basis).double().numpy()
        inside = _in_range(flux)
        n_real, real_share = _real_share_in_range(ev, name, n, seed)
        rows.append({"instrument": name, "n_samples": n,
                     "view_density": name in ev.release.view_priors,
                     "share_in_range": float(inside.mean()),
                     "worst_sample_share": float(inside.mean(1).min()),
                     "n_real": n_real, "real_share_in_range": real_share,
                     "wave": wave, "flux": flux})  # fmt: skip
    return rows


def _in_range(flux: np.ndarray) -> np.ndarray:
    return (flux >= FLUX_RANGE[0]) & (flux <= FLUX_RANGE[1])


def _real_share_in_range(ev: Evaluation, name: str, n: int, seed: int) -> tuple[int, float | None]:
    """Up to n real spectra of the instrument, each divided by its fit's continuum polynomial
    alone (flux × f / model, with f the decoder's normalised flux at the fit): normalised as a
    prior sample is. The share of their valid pixels with flux in FLUX_RANGE."""
    chosen = [
        i for i, s in enumerate(ev.dataset.spectra)
        if not s.synthetic and getattr(instrument_of(s.instrument), "key", None) == name
    ]  # fmt: skip
    if not chosen:
        return 0, None
    chosen = np.random.default_rng(seed).permutation(chosen)[:n]
    spectra = [ev.dataset.spectra[i] for i in chosen]
    inside = []
    for spectrum, fit in zip(spectra, ev.fit(chosen), strict=True):
        decoded = ev.decode(spectrum, fit.v_kms, torch.as_tensor(fit.z[None]))[0]
        positive = fit.model_flux > 0
        flux = spectrum.flux[spectrum.valid][positive]
        inside.append(_in_range(flux * decoded[positive] / fit.model_flux[positive]))
    return len(spectra), float(np.concatenate(inside).mean())


def fitted_extent(ev: Evaluation, fits: dict) -> dict:
    """How far fitted latents (held-out fits) lie from the training stars, in whitened σ."""
    sizes = [np.abs(ev.whitening.whiten(r.z)).max() for rows in fits.values() for _, r in rows]
    if not sizes:
        return {}
    return {"n_fits": len(sizes), "max_abs_w": float(np.max(sizes)),
            "beyond_10_sigma": int(np.sum(np.array(sizes) > 10))}  # fmt: skip


def same_star_neighbours(ev: Evaluation, pair: tuple[str, str] = ("miles", "stelib"), k: int = 5):
    """Stars observed by both instruments: how often a star's latent from one is among the k
    nearest (whitened, one-step) latents of the other instrument's stars to its own latent
    from the other — the same star found again across instruments."""
    keys = [{star_key(ev.dataset.spectra[i].star_id): i for i in ev.members(s)} for s in pair]
    shared = sorted(set(keys[0]) & set(keys[1]))
    if len(shared) <= k:
        return {}
    w = ev.whitened
    rows = {}
    for a, b in ((0, 1), (1, 0)):
        targets = np.array([keys[b][s] for s in shared])
        hits = 0
        for s in shared:
            distance = np.linalg.norm(w[targets] - w[keys[a][s]], axis=1)
            hits += keys[b][s] in targets[np.argsort(distance)[:k]]
        rows[f"{pair[a]}_to_{pair[b]}"] = hits / len(shared)
    return {"n_shared": len(shared), "k": k, **rows}
