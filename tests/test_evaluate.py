"""Evaluation metrics on cases with known answers; the line list; latent sensitivity."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from stargon.assets import line_list, nearest_line
from stargon.core.physics import C_KMS
from stargon.evaluate.holdout import span_floor
from stargon.evaluate.injection import inject
from stargon.evaluate.measurements import noisy_continuum, velocity_preference
from stargon.evaluate.metrics import (
    c2st_accuracy,
    c2st_column_weights,
    fractional_rms,
    probe_rmse,
)
from stargon.evaluate.sensitivity import (
    latent_sensitivity,
    rest_grid,
    sensitive_regions,
)
from stargon.model.batch import make_batch
from stargon.model.decoder import ModelConfig
from stargon.model.fitter import Fitter
from stargon.model.gon import StarGON
from stargon.model.release import Release
from stargon.surveys import read_file


def test_c2st_is_one_half_for_one_distribution_and_near_one_for_two():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 40)), rng.normal(size=(300, 40))
    accuracy, spread = c2st_accuracy(a, b)
    assert abs(accuracy - 0.5) < 0.08 and spread < 0.1
    shifted, _ = c2st_accuracy(a, b + 0.5)
    bayes = 0.5 * (1 + math.erf(0.5 * 0.5 * math.sqrt(40) / math.sqrt(2)))  # Φ(|Δμ|/2) = 0.943
    assert shifted == pytest.approx(bayes, abs=0.04)


def test_c2st_column_weights_peak_where_generated_rows_differ():
    """Smooth 'spectra' whose generated copies lack depth in one line at column 130: the
    classifier's weight peaks there, not at the strong line both share at column 60."""
    rng = np.random.default_rng(3)
    columns = np.arange(200)
    line = lambda centre: np.exp(-0.5 * ((columns - centre) / 3.0) ** 2)  # noqa: E731

    def spectra(depth_130: float) -> np.ndarray:
        depth = rng.uniform(0.2, 0.8, (300, 1))
        return (1 - depth * line(60) - depth_130 * depth * line(130)
                + rng.normal(0, 0.02, (300, 200)))  # fmt: skip

    weights = c2st_column_weights(spectra(0.3), spectra(0.0))
    assert abs(int(np.argmax(weights)) - 130) <= 3
    assert weights[125:136].max() > 3 * weights[55:66].max()


def test_probes_recover_a_linear_label_to_its_noise():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 16))
    y = x @ rng.normal(size=16) + rng.normal(0.0, 0.1, 2000)
    rmse, predicted = probe_rmse("linear", x[:1500], y[:1500], x[1500:], y[1500:])
    assert rmse == pytest.approx(0.1, rel=0.15) and predicted.shape == (500,)
    knn, _ = probe_rmse("knn", x[:1500], y[:1500], x[1500:], y[1500:])
    assert rmse < knn < np.std(y)  # a local average in 16-d is worse, but informative
    with pytest.raises(ValueError, match="unknown probe"):
        probe_rmse("forest", x, y, x, y)


def test_line_list_is_vacuum_and_sorted():
    lines = line_list()
    names = {line.name: line.wavelength for line in lines}
    assert names["Hα"] == 6564.61 and names["Na D2"] == pytest.approx(5891.58, abs=0.02)
    assert names["Br11"] == pytest.approx(16811.1, abs=0.2)  # APOGEE's Brackett 11
    waves = [line.wavelength for line in lines]
    assert waves == sorted(waves) and waves[0] > 3700 and waves[-1] < 17000
    assert nearest_line(6566.0).name == "Hα"  # 64 km/s away
    assert nearest_line(6600.0) is None


def test_sensitive_regions_find_the_peaks_and_name_their_lines():
    wave = rest_grid(3500, 17000, 5000)
    sensitivity = 0.01 * np.random.default_rng(4).random(wave.size)
    for centre, height in ((8544.44, 1.0), (5891.58, 0.7), (15753.3, 0.4)):
        sensitivity += height * np.exp(-0.5 * ((wave - centre) / (centre / 5000)) ** 2)
    regions = sensitive_regions(wave, sensitivity, n=3)
    assert [r.line.name for r in regions] == ["Ca II 8544", "Na D2", "Mg I 15753"]
    assert regions[0].wavelength == pytest.approx(8544.44, abs=1.0)


def test_latent_sensitivity_is_the_jacobian():
    torch.manual_seed(0)
    config = ModelConfig(latent_dim=4, n_basis=6, hidden=16, wave_min=5000.0, wave_max=6000.0)
    model = StarGON(config)
    with torch.no_grad():
        model.decoder.table.normal_(0.0, 0.1)
    wave = rest_grid(5100, 5900, 3000)
    z = torch.randn(1, 4)
    analytic = latent_sensitivity(Fitter(model, None), z, wave, resolving_power=3000)
    basis = model.observation_basis(torch.as_tensor(wave), 0.0, 3000.0)
    eps = 1e-2
    for k in range(4):
        step = torch.zeros(1, 4)
        step[0, k] = eps
        with torch.no_grad():
            up = model.observe(z + step, basis)[0]
            down = model.observe(z - step, basis)[0]
        numeric = ((up - down) / (2 * eps)).abs().numpy()
        np.testing.assert_allclose(analytic[k], numeric, atol=2e-3 * numeric.max())


def test_pseudo_continuum_follows_the_continuum_not_the_lines():
    wave = np.linspace(4000, 7000, 6000)
    continuum = 2.0 + 1e-4 * (wave - 4000)
    lines = 1 - 0.6 * np.exp(-0.5 * ((wave[:, None] - np.arange(4100, 7000, 97)) / 1.5) ** 2)
    flux = continuum * lines.prod(axis=1)
    estimate = noisy_continuum(wave, flux)
    inner = slice(300, -300)
    np.testing.assert_allclose(estimate[inner], continuum[inner], rtol=0.02)


def _line_centre(wave: np.ndarray, flux: np.ndarray, near: float) -> float:
    """Flux-weighted centre of the absorption within ±6 Å of `near`."""
    window = np.abs(wave - near) < 6.0
    depth = np.clip(1.0 - flux[window] / np.percentile(flux[window], 95), 0, None)
    return float((wave[window] * depth).sum() / depth.sum())


def test_injection_moves_a_real_line_by_the_doppler_factor_and_keeps_masks(data):
    star = read_file(data / "miles/MILES_res2.50_star_m0001V.fits")[0]
    star.ivar[2000:2010] = 0.0  # a bad column in the source
    moved = inject(star, 150.0, 1e4, np.random.default_rng(0))  # noiseless: nothing added
    valid = moved.valid
    rest = _line_centre(star.wave[star.valid], star.flux[star.valid], 6564.61)
    seen = _line_centre(moved.wave[valid], moved.flux[valid], 6564.61 * (1 + 150 / C_KMS))
    assert seen - rest == pytest.approx(rest * 150.0 / C_KMS, abs=0.02)  # 3.28 Å
    masked_rest = star.wave[2000:2010] * (1 + 150.0 / C_KMS)
    inside_mask = (moved.wave > masked_rest[0]) & (moved.wave < masked_rest[-1])
    assert inside_mask.any() and not valid[inside_mask].any()
    assert valid.sum() > 0.99 * star.valid.sum() - 60


def test_the_pixels_decide_between_a_fit_s_velocity_and_a_wrong_catalogue_s(data):
    """A real MILES star moved to +120 km/s at S/N 30: a catalogue 150 km/s off is decisively
    worse, a catalogue at the fit's own velocity is not, and a held velocity stays held."""
    star = read_file(data / "miles/MILES_res2.50_star_m0001V.fits")[0]
    moved = inject(star, 120.0, 30.0, np.random.default_rng(1))  # an observed-frame spectrum
    fitter = Fitter.from_release(Release.load(None))
    wrong = velocity_preference(fitter, [moved], np.array([-30.0]))[0]
    assert wrong["v_fit_kms"] == pytest.approx(120.0, abs=10.0)
    assert wrong["prefer"] == "fit" and wrong["delta_chi2"] > 25.0
    right = velocity_preference(fitter, [moved], np.array([wrong["v_fit_kms"]]))[0]
    assert right["prefer"] == "neither" and abs(right["delta_chi2"]) < 2.0
    assert fitter.fit([moved], velocities=[-30.0])[0].v_kms == pytest.approx(-30.0)


def test_the_span_floor_bounds_a_fit_and_reaches_zero_on_a_spectrum_inside_the_span(spectra):
    release = Release.load(None)
    apogee = spectra[1]
    fitter = Fitter.from_release(release)
    (fit,) = fitter.fit([apogee])
    fit_rms, floor_rms = span_floor(fitter, apogee, fit)
    assert floor_rms <= fit_rms  # the model's own spectrum is one combination of the basis
    # A spectrum made of the basis functions themselves, under the fit's continuum: the floor
    # is the least-squares fit's round-off, and the model's own fit is far from it.
    batch = make_batch([apogee], v_kms=[fit.v_kms])
    with torch.no_grad():
        basis = release.model.basis(batch)[:, 0].double().numpy()
        decoded = release.model.observe(torch.as_tensor(fit.z[None]), release.model.basis(batch))
    polynomial = fit.model_flux / decoded[0].double().numpy()
    weights = np.random.default_rng(0).normal(size=len(basis)) * 0.05
    weights[0] = 1.0
    flux = apogee.flux.copy()
    flux[apogee.valid] = polynomial * (weights @ basis)
    inside = dataclasses.replace(apogee, flux=flux)
    fit_rms, floor_rms = span_floor(fitter, inside, fit)
    assert floor_rms < 1e-5 < 1e-3 < fit_rms
    # Outside the span until the missing function is given as an extra one.
    extra = np.sin(np.linspace(0.0, 40.0, len(polynomial)))[None]
    flux = flux.copy()
    flux[apogee.valid] += 0.05 * polynomial * extra[0]
    outside = dataclasses.replace(apogee, flux=flux)
    assert span_floor(fitter, outside, fit)[1] > 1e-2
    assert span_floor(fitter, outside, fit, extra=extra)[1] < 1e-5
    used = np.arange(len(fit.model_flux)) % 3 > 0  # a subset of the pixels: that subset's RMS
    fit_rms, _ = span_floor(fitter, inside, fit, used)
    truth = inside.flux[inside.valid][used]
    assert fit_rms == pytest.approx(fractional_rms(truth, fit.model_flux[used]), rel=1e-12)
