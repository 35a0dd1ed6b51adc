"""Physics against numbers: Doppler, air↔vacuum, LSF, resampling, continuum."""

from __future__ import annotations

import math

import pytest
import torch

from stargon.model import physics


@pytest.fixture(autouse=True)
def float64():
    """Physics is checked in double precision; the default is restored for other modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_halpha_shifted_by_100_kms_lands_at_6566_80():
    observed = physics.rest_to_observed(torch.tensor([6564.61]), 100.0)
    assert observed.item() == pytest.approx(6566.80, abs=0.005)
    back = physics.observed_to_rest(observed, 100.0)
    assert back.item() == pytest.approx(6564.61, abs=1e-9)


def test_relativistic_doppler_differs_at_second_order():
    v = 300.0
    beta = v / physics.C_KMS
    rel = physics.doppler_factor(v, relativistic=True).item()
    assert rel == pytest.approx(math.sqrt((1 + beta) / (1 - beta)), rel=1e-14)
    assert rel - physics.doppler_factor(v).item() == pytest.approx(
        beta**2 / 2 + beta**3 / 2, rel=1e-4
    )


def test_doppler_is_batched_per_spectrum():
    wave = torch.tensor([[5000.0, 6000.0], [5000.0, 6000.0]])
    shifted = physics.rest_to_observed(wave, torch.tensor([0.0, -300.0]))
    assert torch.equal(shifted[0], wave[0])
    assert shifted[1, 1].item() == pytest.approx(6000 * (1 - 300 / physics.C_KMS), rel=1e-15)


@pytest.mark.parametrize(
    ("air", "vacuum"),
    [
        (6562.80, 6564.61),  # Hα
        (5889.951, 5891.583),  # Na I D2
        (3933.663, 3934.777),  # Ca II K
        (8542.09, 8544.44),  # Ca II triplet
    ],
)
def test_air_vacuum_matches_iau_values(air, vacuum):
    assert physics.air_to_vacuum(torch.tensor([air])).item() == pytest.approx(vacuum, abs=0.006)
    assert physics.vacuum_to_air(torch.tensor([vacuum])).item() == pytest.approx(air, abs=0.006)


def test_air_vacuum_round_trip_and_uv_untouched():
    wave = torch.linspace(2000.0, 25000.0, 5001)
    round_trip = physics.vacuum_to_air(physics.air_to_vacuum(wave))
    assert (round_trip - wave).abs().max().item() < 1e-6
    uv = torch.tensor([1215.67, 1549.0])
    assert torch.equal(physics.air_to_vacuum(uv), uv)


def nonuniform_grid(n: int = 3000) -> torch.Tensor:
    """A log-spaced grid with jitter, like a real spectrograph's pixels."""
    gen = torch.Generator().manual_seed(1)
    steps = torch.exp(torch.linspace(math.log(0.5), math.log(1.5), n)) * (
        1 + 0.3 * torch.rand(n, generator=gen)
    )
    return 5000.0 + torch.cumsum(steps, 0)


def measured_fwhm(wave: torch.Tensor, profile: torch.Tensor) -> float:
    """FWHM of a single peak by linear interpolation of the half-maximum crossings."""
    half = profile.max() / 2
    above = torch.nonzero(profile >= half).squeeze(-1)
    lo, hi = above[0].item(), above[-1].item()

    def cross(i, j):
        return wave[i] + (half - profile[i]) * (wave[j] - wave[i]) / (profile[j] - profile[i])

    return (cross(hi, hi + 1) - cross(lo - 1, lo)).item()


def test_lsf_keeps_flux_integral_on_nonuniform_grid():
    wave = nonuniform_grid()
    gen = torch.Generator().manual_seed(2)
    flux = 1 + torch.rand(2, wave.numel(), generator=gen)
    widths = physics.pixel_widths(wave)
    out = physics.convolve_lsf(wave, flux, 1500.0)
    before, after = (flux * widths).sum(-1), (out * widths).sum(-1)
    assert torch.allclose(after, before, rtol=1e-6, atol=0)


def test_lsf_gives_expected_fwhm():
    wave = nonuniform_grid(6000)
    centre = wave[3000].item()
    intrinsic = 0.8  # Å FWHM of the input line
    line = torch.exp(-0.5 * ((wave - centre) / (intrinsic / physics.FWHM_PER_SIGMA)) ** 2)
    resolving_power = 3000.0
    out = physics.convolve_lsf(wave, line, resolving_power)
    expected = math.hypot(intrinsic, centre / resolving_power)
    assert measured_fwhm(wave, out) == pytest.approx(expected, rel=0.01)


def test_lsf_keeps_a_flat_spectrum_flat_on_a_smooth_grid():
    """A continuum stays 1 (away from the edges) on a log grid with a per-pixel R (MILES-like)."""
    wave = 3500.0 * torch.exp(torch.arange(6000) * 1e-4)
    flat = torch.ones(2, wave.numel())
    out = physics.convolve_lsf(wave, flat, wave / 2.51)
    interior = slice(100, -100)
    assert (out[:, interior] - 1).abs().max().item() < 1e-6


def test_lsf_is_differentiable():
    wave = torch.linspace(6000, 6010, 40)
    flux = torch.rand(1, 40, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: physics.convolve_lsf(wave, f, 5000.0), (flux,))


def test_resample_interpolates_and_propagates_ivar():
    wave_in = torch.arange(10.0) + 5000
    flux_in = 2 * wave_in - 3
    ivar_in = torch.ones(10)
    ivar_in[6] = 0
    wave_out = torch.tensor([5000.5, 5002.25, 5005.5, 5004.0, 4999.0, 5010.0])
    flux_out, ivar_out = physics.resample(wave_in, flux_in, ivar_in, wave_out)
    assert torch.allclose(flux_out[:4], 2 * wave_out[:4] - 3)
    # midpoint: var = 0.25 + 0.25 → ivar 2; quarter point: 0.5625 + 0.0625 → ivar 1.6
    assert ivar_out[0].item() == pytest.approx(2.0)
    assert ivar_out[1].item() == pytest.approx(1.6)
    assert ivar_out[2].item() == 0  # leans on the masked pixel 6
    assert ivar_out[3].item() == pytest.approx(1.0)  # on a pixel: untouched
    assert ivar_out[4].item() == 0 and ivar_out[5].item() == 0  # outside the input range


def test_continuum_recovered_per_segment_in_closed_form():
    wave = torch.linspace(4000, 7000, 600)
    gen = torch.Generator().manual_seed(3)
    model = 1 - 0.5 * torch.rand(3, 600, generator=gen)
    x = (wave - 5500) / 1500
    true_continuum = torch.where(wave < 5500, 2 + 0.3 * x - 0.2 * x**2, 5 - x + 0.1 * x**2)
    flux = model * true_continuum
    ivar = torch.ones_like(flux)
    bad = torch.zeros(600, dtype=torch.bool)
    bad[::17] = True
    flux[:, bad] = 1e6  # cosmic rays, masked: they must not pull the fit
    ivar[:, bad] = 0
    segments = [(0, int((wave < 5500).sum())), (int((wave < 5500).sum()), 600)]
    continuum = physics.fit_continuum(wave, flux, ivar, model, segments, degree=2)
    assert torch.allclose(continuum, true_continuum.expand_as(continuum), rtol=1e-6)
