"""The forward model's symmetry under a Doppler shift, and the fast velocity scan against a
brute-force χ²(v) through the same forward model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stargon.core.physics import rest_to_observed
from stargon.model.batch import make_batch
from stargon.model.continuum import solve_continuum
from stargon.model.fit import template_pyramid, template_scan
from stargon.model.gon import StarGON
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
    templates = template_pyramid(model)
    [(v_grid, fast)] = template_scan(model, batch, templates)
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
