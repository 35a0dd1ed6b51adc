"""The forward model's symmetry under a Doppler shift; its fast reads (basis with its v-slope,
per-pixel R, a star's own summed table) against the plain ones; and the fast velocity scan
against a brute-force χ²(v) through the same forward model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.func import jvp

from stargon.core.physics import rest_to_observed
from stargon.model.batch import make_batch
from stargon.model.continuum import solve_continuum
from stargon.model.fit_config import FitConfig
from stargon.model.gon import StarGON
from stargon.model.velocity import template_bank, template_scan
from tests.test_gon import trained_a_little


@pytest.fixture(scope="module")
def model(spectra) -> StarGON:
    return trained_a_little(spectra, steps=30)


def moved(spectrum, v_kms: float):
    """The same star observed from a frame in which it recedes at v: every pixel's wavelength
    λ (1 + v/c), the same flux, errors and resolving power per pixel."""
    return dataclasses.replace(
        spectrum, wave=rest_to_observed(spectrum.wave, v_kms), frame="observed", source="moved"
    )


@pytest.mark.parametrize("v_kms", [300.0, -300.0])
def test_latents_do_not_change_when_the_star_moves(model, spectra, v_kms):
    """Encoded at its own velocity, a star shifted by ±300 km/s gets the latents it has at rest
    (float32 round-off); encoded as if at rest it does not — the shift is seen, then undone."""
    miles = spectra[0]
    at_rest = model.encode(make_batch([miles], mask_atmosphere=False))
    shifted = moved(miles, v_kms)
    known = model.encode(make_batch([shifted], v_kms=[v_kms], mask_atmosphere=False))
    ignored = model.encode(make_batch([shifted], mask_atmosphere=False))
    scale = at_rest.abs().max()
    assert (known - at_rest).abs().max() < 2e-3 * scale
    assert (ignored - at_rest).abs().max() > 0.05 * scale


def test_the_fast_scan_matches_a_brute_force_chi2_of_velocity(model, spectra):
    """`template_scan` (one FFT cross-correlation on the template table) against χ²(v) computed
    pixel by pixel through `observation_basis` with the same continuum and free amplitude: the
    same curve, the same minimum."""
    lamost = moved(spectra[2], 0.0)
    batch = make_batch([lamost], dtype=torch.float64)
    batch = dataclasses.replace(batch, design=batch.design.double())
    templates = template_bank(model)
    [(v_grid, fast)] = template_scan(model, batch, templates, FitConfig())
    fast = fast[0]
    picks = np.r_[np.argsort(fast)[:5], np.linspace(0, len(v_grid) - 1, 12).astype(int)]
    flux, ivar = batch.flux[0], batch.ivar[0]
    with torch.no_grad():
        reference = model.observation_basis(
            batch.wave[0], 0.0, batch.resolving_power[0], templates
        )[0]

        continuum = solve_continuum(batch.design[0], flux, ivar, reference)
        slow = []
        for v in v_grid[picks]:
            shape = (
                continuum
                * model.observation_basis(
                    batch.wave[0], float(v), batch.resolving_power[0], templates
                )[0]
            )
            amplitude = (ivar * flux * shape).sum() / (ivar * shape**2).sum()
            slow.append(float((ivar * (flux - amplitude * shape) ** 2).sum() / batch.n_valid[0]))
    np.testing.assert_allclose(fast[picks], slow, rtol=0.02)
    assert picks[np.argmin(slow)] == np.argmin(fast)


def test_the_basis_slope_read_in_one_pass_is_forward_mode_autograd(model, spectra):
    """`pixel_basis_and_slope` (the table's difference across each cell, times ∂ln λ/∂v) equals
    forward-mode autograd through `pixel_basis`, on constant-R (LAMOST) and per-pixel-R
    (MILES, STELIB) spectra at several velocities."""
    batch = make_batch([spectra[2], spectra[0], spectra[4]])
    pyramid = model.decoder.pyramid()
    v = torch.tensor([-250.0, 3.0, 410.0])

    def basis_at(velocity):
        return model.decoder.pixel_basis(batch.wave, velocity, batch.resolving_power, pyramid)

    with torch.no_grad():
        expected, expected_slope = jvp(basis_at, (v,), (torch.ones_like(v),))
        basis, slope = model.decoder.pixel_basis_and_slope(
            batch.wave, v, batch.resolving_power, pyramid
        )
    torch.testing.assert_close(basis, expected, rtol=0, atol=0)
    torch.testing.assert_close(slope, expected_slope, rtol=1e-5, atol=1e-7)
    assert expected_slope.abs().max() > 1e-3  # the slope is there to compare


def test_a_per_pixel_resolving_power_reads_each_pixel_as_its_own_constant_r(model, spectra):
    """MILES's R changes along the spectrum, so its pixels read different pyramid levels, each
    only where it serves: every pixel must equal the same pixel read with its R as a scalar
    (all pixels through every level's plain read)."""
    miles = make_batch([spectra[0]])
    pyramid = model.decoder.pyramid()
    resolving_power = miles.resolving_power[0]
    assert resolving_power.max() > 1.3 * resolving_power.min()  # several levels are read
    with torch.no_grad():
        basis = model.decoder.pixel_basis(miles.wave[0], 0.0, resolving_power, pyramid)
        picks = np.linspace(0, len(resolving_power) - 1, 25).astype(int)
        for i in picks:
            alone = model.decoder.pixel_basis(
                miles.wave[0, i : i + 1], 0.0, float(resolving_power[i]), pyramid
            )
            torch.testing.assert_close(basis[:, i : i + 1], alone, rtol=1e-6, atol=1e-7)


def test_a_star_read_from_its_own_summed_table_is_the_decoded_basis(model, spectra):
    """`pixel_model` (the star's spectrum summed on the table, then read once per pixel) equals
    `observe(z, pixel_basis)` at each velocity of each star."""
    batch = make_batch([spectra[2], spectra[0]])
    pyramid = model.decoder.pyramid()
    z = torch.randn(2, model.config.latent_dim, generator=torch.Generator().manual_seed(0))
    velocities = torch.tensor([[-40.0, 0.0, 12.5], [100.0, -3.0, 7.0]], dtype=torch.float64)
    with torch.no_grad():
        models = model.decoder.pixel_model(
            z, batch.wave, velocities, batch.resolving_power, pyramid
        )
        for column in range(velocities.shape[1]):
            basis = model.observation_basis(
                batch.wave, velocities[:, column], batch.resolving_power, pyramid
            )
            torch.testing.assert_close(
                models[:, column], model.observe(z, basis), rtol=1e-5, atol=1e-5
            )


def test_a_batch_scans_each_spectrum_as_it_is_scanned_alone(model, spectra):
    """The template scan groups spectra by LSF width and lays them on one grid: each
    spectrum's χ²(v) must be the one it gets alone (LAMOST twice, at two velocities, with
    APOGEE and Gaia RVS, of other widths and lengths)."""
    group = [moved(spectra[2], 0.0), moved(spectra[2], 150.0), spectra[1], spectra[3]]
    templates = template_bank(model)
    together = template_scan(model, make_batch(group), templates, FitConfig())
    assert together[0][1].shape == together[1][1].shape != together[2][1].shape
    for spectrum, (v_grid, chi2) in zip(group, together, strict=True):
        [(alone_grid, alone)] = template_scan(model, make_batch([spectrum]), templates, FitConfig())
        np.testing.assert_array_equal(v_grid, alone_grid)
        np.testing.assert_allclose(chi2, alone, rtol=1e-6)
