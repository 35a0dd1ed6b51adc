"""The GON model: batch independence, checkpoints, radial velocity by injection, sampling."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from astropy.io import fits

from stargon.core.physics import observed_to_rest
from stargon.model.batch import make_batch
from stargon.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stargon.model.decoder import ModelConfig
from stargon.model.fitter import Fitter
from stargon.model.gon import StarGON
from stargon.model.prior import LatentPrior
from stargon.model.sampling import sample_spectra
from stargon.surveys import Spectrum
from stargon.surveys.instruments import instrument
from stargon.train.emulator import PayneEmulator

SMALL = ModelConfig(latent_dim=8, n_basis=8, hidden=32, wave_min=3500.0, wave_max=17000.0)


def trained_a_little(spectra, steps: int = 5) -> StarGON:
    """A model with non-trivial weights (a few optimiser steps on real spectra)."""
    torch.manual_seed(0)
    model = StarGON(SMALL)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = make_batch(spectra, n_pixels=500, rngs=[np.random.default_rng(i) for i in range(5)])
    for _ in range(steps):
        loss, _, _ = model.loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


def test_latent_does_not_depend_on_batch_size_or_batch_mates(spectra):
    model = trained_a_little(spectra)
    alone = model.encode(make_batch(spectra[:1]))
    together = model.encode(make_batch(spectra))
    reordered = model.encode(make_batch(spectra[::-1]))
    assert alone.abs().max() > 1e-4  # a real latent, not zeros
    # float32 round-off of a 16 × 16 solve; a batch-coupled step would differ by O(1)
    assert torch.allclose(alone[0], together[0], rtol=1e-3, atol=1e-5)
    assert torch.allclose(together[0], reordered[-1], rtol=1e-3, atol=1e-5)


def test_loss_decreases_when_training(spectra):
    torch.manual_seed(0)
    model = StarGON(SMALL)
    batch = make_batch(spectra, n_pixels=500, rngs=[np.random.default_rng(i) for i in range(5)])
    before = model.loss(batch)[0].item()
    model = trained_a_little(spectra, steps=30)
    assert model.loss(batch)[0].item() < 0.5 * before


def test_checkpoint_reloads_to_identical_outputs(spectra, tmp_path):
    model = trained_a_little(spectra)
    folder = save_checkpoint(tmp_path / "ckpt", model, card={"note": "test"})
    loaded, document, _ = load_checkpoint(folder)
    batch = make_batch(spectra)
    assert torch.equal(model.encode(batch), loaded.encode(batch))
    assert document["model_config"] == SMALL.to_dict()
    assert not list(tmp_path.glob(".ckpt*")), "staging folders must not be left behind"


def test_bad_checkpoints_give_clear_errors(spectra, tmp_path):
    model = trained_a_little(spectra, steps=1)
    folder = save_checkpoint(tmp_path / "ckpt", model)
    weights, card = folder / "model.safetensors", folder / "model.json"
    good_weights, good_card = weights.read_bytes(), card.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(folder)

    document = json.loads(good_card)
    document.pop("weights_sha256")
    card.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_checkpoint(folder)

    weights.write_bytes(good_weights)
    document["model_config"]["n_basis"] = 9
    card.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="weights do not fit the config"):
        load_checkpoint(folder)

    document["model_config"]["colour"] = "blue"
    card.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="unknown model config keys"):
        load_checkpoint(folder)

    card.unlink()
    with pytest.raises(CheckpointError, match=r"model\.json: missing"):
        load_checkpoint(folder)


def template_model(template: Spectrum) -> StarGON:
    """A model whose every latent decodes to one known rest-frame spectrum (h ≡ 0)."""
    config = ModelConfig(latent_dim=4, n_basis=4, hidden=16, wave_min=15000.0, wave_max=17100.0)
    model = StarGON(config)
    grid = torch.exp(model.decoder.ln_min + config.ln_step * torch.arange(config.n_table))
    valid = template.valid
    flux = np.interp(grid.numpy(), template.wave[valid], template.flux[valid])
    with torch.no_grad():
        model.decoder.table.zero_()
        model.decoder.table[0] = torch.as_tensor(flux)
    return model


@pytest.mark.parametrize("v_true", [-287.4, 37.3])
def test_radial_velocity_recovered_on_an_injected_shift(data, v_true):
    """An APOGEE-like (R = 22,500, S/N 100) emulator spectrum, shifted and noised."""
    emulator = PayneEmulator(data / "apogee_payne/neural_nets/NN_normalized_spectra.npz")
    labels = torch.tensor([[4800.0, 4.5, 0.0, 0.1, 6.0]], dtype=torch.float64)
    (rest,) = emulator.spectra(labels)
    model = template_model(rest)
    observed_wave = instrument("apogee").pixels()
    rest_wave_seen = observed_to_rest(observed_wave, v_true)
    inside = (rest_wave_seen > rest.wave[0]) & (rest_wave_seen < rest.wave[-1])
    clean = np.interp(rest_wave_seen[inside], rest.wave, rest.flux)
    rng = np.random.default_rng(1)
    observed = Spectrum(
        wave=observed_wave[inside],
        flux=clean * 1.3 + rng.normal(0, 1.3 / 100, clean.size),
        ivar=np.full(clean.size, (100 / 1.3) ** 2),
        instrument="APOGEE",
        resolving_power=math.inf,  # the template already has APOGEE's resolution
        frame="observed",
        normalised=True,
        source="injected",
        star_id="injected",
    )
    (result,) = Fitter(model, None).fit([observed])
    assert result.v_err_kms < 0.1
    assert abs(result.v_kms - v_true) < max(4 * result.v_err_kms, 0.05)
    assert result.chi2_dof == pytest.approx(1.0, abs=0.15)


def test_sampling_from_the_prior_on_an_instrument(spectra, tmp_path):
    model = trained_a_little(spectra)
    latents = model.encode(make_batch(spectra)).numpy()
    rng = np.random.default_rng(0)
    cloud = latents[rng.integers(len(latents), size=200)] + rng.normal(
        0, 0.05, (200, SMALL.latent_dim)
    )
    prior = LatentPrior.fit(cloud, n_components=2)
    lamost = instrument("lamost")
    z, flux = sample_spectra(model, prior, lamost, n=7, v_kms=50.0)
    assert z.shape == (7, SMALL.latent_dim) and flux.shape == (7, lamost.pixels().size)
    assert np.all(np.isfinite(flux))
    # the latents are the prior's: mixture mean and total variance, to sampling noise
    many, _ = sample_spectra(model, prior, lamost, n=4000, seed=1)
    mean = prior.weights @ prior.means
    parts = zip(prior.weights, prior.means, prior.covariances, strict=True)
    spread = sum(w * (c + np.outer(m - mean, m - mean)) for w, m, c in parts)
    assert np.all(np.abs(many.mean(0) - mean) < 5 * np.sqrt(np.diag(spread) / 4000))
    assert np.trace(np.cov(many.T)) == pytest.approx(np.trace(spread), rel=0.1)
    from stargon.model.sampling import sample_to_file

    # The template bank is the prior's means: entries that share memory must still save.
    tensors = prior.to_tensors() | {"prototypes": torch.as_tensor(prior.means)}
    folder = save_checkpoint(tmp_path / "m", model, extra_tensors=tensors)
    out = sample_to_file(3, "galah", folder, tmp_path / "s.fits", 0.0, 0)
    z_galah, flux_galah = sample_spectra(model, prior, instrument("galah"), n=3, seed=0)
    with fits.open(out) as hdul:
        assert hdul["FLUX"].data.shape == (3, 4 * 4096)
        np.testing.assert_allclose(hdul["FLUX"].data, flux_galah, rtol=1e-6)
        np.testing.assert_allclose(hdul["LATENTS"].data, z_galah, rtol=1e-6)
        np.testing.assert_allclose(hdul["WAVE"].data["wavelength"], instrument("galah").pixels())
        assert hdul["WAVE"].columns["wavelength"].unit == "Angstrom"
        header = hdul[0].header
        assert header["OBJECT"] == "synthetic" and header["ORIGIN"].startswith("StarGON")
        assert not any(card.keyword.startswith("HIERARCH") or len(card.keyword) > 8
                       for hdu in hdul for card in hdu.header.cards)  # fmt: skip


def test_fit_command_writes_one_row_per_spectrum_and_reports_bad_files(data, spectra, tmp_path):
    model = trained_a_little(spectra)
    folder = save_checkpoint(tmp_path / "m", model)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "broken.fits").write_bytes(b"SIMPLE  = T" + b" " * 100)
    for name in ("gaia_rvs/KOI-001.csv", "miles/MILES_res2.50_star_m0002V.fits"):
        (inputs / name.split("/")[1]).write_bytes((data / name).read_bytes())
    out = tmp_path / "fits.csv"
    result = subprocess.run(
        [sys.executable, "-m", "stargon", "fit", str(inputs), "--checkpoint", str(folder),
         "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1  # one input failed
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2
    assert {r["instrument"] for r in rows} == {"Gaia RVS", "MILES"}
    assert all(float(r["rv_kms"]) == 0.0 for r in rows)  # rest-frame spectra keep v = 0
    assert set(rows[0]) >= {"source", "star_id", "rv_err_kms", "chi2_dof", "n_pix", "z_0", "z_7"}
    assert all(float(row[f"z_err_{k}"]) > 0 for row in rows for k in range(8))
    assert "broken.fits" in result.stderr
