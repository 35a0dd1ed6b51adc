"""Latents that describe the star: the noise-invariant GON step, the prior, the atmosphere mask,
latent uncertainties and the whitened frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stargon.assets import atmosphere_bands
from stargon.model.batch import make_batch
from stargon.model.fitter import Fitter
from stargon.model.whitening import Whitening
from stargon.surveys import Spectrum
from stargon.surveys.atmosphere import atmosphere_mask
from tests.test_gon import trained_a_little

A_BAND = next(b for b in atmosphere_bands() if b.name == "O2 A band")


@pytest.fixture(scope="module")
def model(spectra):
    return trained_a_little(spectra)


def test_gauss_newton_step_lowers_chi2(spectra):
    """One linearised MAP step from the origin lowers χ² of (nearly) every spectrum once the
    decoder has trained with it; a step of the wrong sign or size raises it."""
    model = trained_a_little(spectra, steps=30)
    batch = make_batch(spectra)
    basis = model.basis(batch)
    with torch.no_grad():
        at_origin = model.chi2(torch.zeros(len(spectra), model.config.latent_dim), basis, batch)
    for precision in (0.0, 1.0):
        z = model.encode(batch, basis, prior_precision=precision)
        with torch.no_grad():
            after = model.chi2(z, basis, batch)
        assert (after / at_origin).median() < 0.9, (precision, after, at_origin)
        assert (after < at_origin).sum() >= len(spectra) - 1, (precision, after, at_origin)


def scaled(spectrum: Spectrum, factor: float) -> Spectrum:
    return Spectrum(**{**spectrum.__dict__, "ivar": spectrum.ivar * factor})


def test_latent_ignores_the_noise_level_without_prior_and_leans_on_data_with_it(model, spectra):
    noisy = make_batch(spectra)
    clean = make_batch([scaled(s, 100.0) for s in spectra])
    free_noisy = model.encode(noisy, prior_precision=0.0)
    free_clean = model.encode(clean, prior_precision=0.0)
    assert free_noisy.abs().max() > 1e-3
    # (float32 round-off allows ~0.2 %; a gradient step would move z a hundredfold)
    assert torch.allclose(free_noisy, free_clean, rtol=1e-2, atol=1e-3 * free_noisy.abs().max())
    # With a prior strong enough to matter, better data pull z toward the data's own answer.
    prior_noisy = model.encode(noisy, prior_precision=1e4)
    prior_clean = model.encode(clean, prior_precision=1e4)
    gap_noisy = (prior_noisy - free_noisy).norm(dim=1)
    gap_clean = (prior_clean - free_noisy).norm(dim=1)
    assert torch.all(gap_clean < 0.9 * gap_noisy), (gap_clean, gap_noisy)
    assert (gap_clean / gap_noisy).median() < 0.5, (gap_clean, gap_noisy)
    assert torch.all(prior_noisy.norm(dim=1) < free_noisy.norm(dim=1))  # shrunk toward 0


def test_telluric_and_sky_pixels_get_zero_ivar(spectra):
    lamost = spectra[2]
    in_band = (lamost.wave >= A_BAND.wave_min) & (lamost.wave <= A_BAND.wave_max)
    assert in_band.sum() > 20 and lamost.ivar[in_band].max() > 0  # the file has data there
    batch = make_batch([lamost])
    valid = lamost.valid
    ivar = batch.ivar[0, : valid.sum()].numpy()
    assert np.all(ivar[in_band[valid]] == 0)
    middle = (lamost.wave > 5000) & (lamost.wave < 5400)
    assert np.all(ivar[(middle & valid)[valid]] > 0)
    drawn = make_batch([lamost], n_pixels=2000, rngs=[np.random.default_rng(0)])
    wave = drawn.wave[0].numpy()
    assert not np.any((wave >= A_BAND.wave_min) & (wave <= A_BAND.wave_max))
    # Space-based spectra keep their interior; rest-frame ones get bands widened by ±150 km/s.
    gaia = spectra[3]
    assert not atmosphere_mask(gaia)[30:-30].any()  # (1 % of the span at each end: 24 px)
    stelib = spectra[4]
    margin = A_BAND.wave_min * 140 / 299_792.458
    just_outside = (stelib.wave > A_BAND.wave_min - margin) & (stelib.wave < A_BAND.wave_min)
    assert just_outside.any() and atmosphere_mask(stelib)[just_outside].all()
    assert not make_batch([lamost], mask_atmosphere=False).ivar[0, in_band[valid]].eq(0).all()


def test_latent_uncertainty_matches_the_scatter_over_noise_realisations(model, spectra):
    """A spectrum made by the model itself at S/N 250, refitted for 40 noise draws: the Laplace
    σ_z agrees with the spread of the fitted z (median over latents, within 20 %), and the
    fits' χ²/dof is 1."""
    miles = spectra[0]
    truth = model.encode(make_batch([miles]))
    basis = model.observation_basis(torch.as_tensor(miles.wave), 0.0, miles.resolving_power)
    with torch.no_grad():
        flux = model.observe(truth, basis)[0].double().numpy()
    sigma = 0.004
    rng = np.random.default_rng(1)
    fitted, errors, chi2 = [], [], []
    for _ in range(40):
        noisy = Spectrum(
            wave=miles.wave, flux=flux + rng.normal(0, sigma, flux.size),
            ivar=np.full(flux.size, sigma**-2), instrument="MILES",
            resolving_power=miles.resolving_power, frame="rest", normalised=True,
            source="model-made", star_id="model",
        )  # fmt: skip
        (result,) = Fitter(model, None).fit([noisy], fit_velocity=False)
        fitted.append(result.z)
        errors.append(result.z_err)
        chi2.append(result.chi2_dof)
    ratio = np.std(fitted, axis=0, ddof=1) / np.median(errors, axis=0)
    assert 0.8 < np.median(ratio) < 1.2, ratio
    # the model is perfect here: χ²/dof (as fits report it) is 1 to its noise (0.3 %)
    assert np.mean(chi2) == pytest.approx(1.0, abs=0.02)


def test_whitening_decorrelates_orders_and_round_trips():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(4, 4))
    latents = rng.normal(size=(5000, 4)) * [5.0, 2.0, 1.0, 0.1] @ mixing + 3.0
    whitening = Whitening.fit(latents)
    w = whitening.whiten(latents)
    assert np.allclose(np.cov(w.T), np.eye(4), atol=1e-6)
    assert np.all(np.diff(whitening.scale) < 0)  # largest variance first
    assert np.allclose(whitening.unwhiten(w), latents)
    covariance = np.cov(latents.T)
    assert np.allclose(whitening.whiten_covariance(covariance), np.eye(4), atol=1e-6)
    tensors = whitening.to_tensors()
    again = Whitening.from_tensors(tensors, 4)
    assert np.allclose(again.whiten(latents), w)


def test_roughness_penalises_only_detail_finer_than_the_supported_resolution(spectra):
    from stargon.model.decoder import BasisDecoder, ModelConfig
    from stargon.train.coverage import resolution_coverage

    config = ModelConfig(latent_dim=2, n_basis=2, hidden=8, wave_min=5000.0, wave_max=5200.0)
    decoder = BasisDecoder(config)
    with torch.no_grad():
        decoder.table[:] = 1.0
    wave = torch.linspace(5050.0, 5150.0, 400, dtype=torch.float64)
    z = torch.zeros(3, 2)
    coarse = torch.full((400,), 2000.0)
    assert decoder.roughness(z, wave, coarse) < 1e-10  # a flat spectrum has nothing to lose
    ln_wave = torch.log(torch.tensor(5100.0)) + config.ln_step * torch.arange(-2, 3)
    cells = ((ln_wave - decoder.ln_min) / config.ln_step).round().long()
    with torch.no_grad():
        decoder.table[0, cells] = 0.2  # a line 5 table cells (≈ 22 km/s) wide
    assert decoder.roughness(z, wave, coarse) > 1e-4  # finer than R = 2,000 supports
    fine = torch.full((400,), 1e6)
    assert decoder.roughness(z, wave, fine) < 1e-3 * decoder.roughness(z, wave, coarse)
    # Coverage: the resolving power that at least `count` spectra reach at each wavelength.
    centres, covered = resolution_coverage(spectra, ModelConfig(), count=1)

    def at(wavelength: float) -> float:
        return covered[np.argmin(np.abs(centres - wavelength))]

    assert at(16000.0) == pytest.approx(22500.0)  # the APOGEE spectrum
    assert 1000 < at(5000.0) < 5000  # only low-resolution spectra cover 5,000 Å here
    assert at(7650.0) < at(7500.0)  # the O₂ A band is masked: fewer spectra reach it
    _, none = resolution_coverage(spectra, ModelConfig(), count=len(spectra) + 1)
    assert not none.any()
