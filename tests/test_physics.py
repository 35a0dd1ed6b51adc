"""Physics against numbers, on the path the model runs: Doppler and LSF through
`StarGON.observation_basis`, air↔vacuum as the readers use it, the continuum as `make_batch` and
`solve_continuum` build it. `tests/oracle.py` holds the slow independent LSF they are checked
against."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stargon.core import physics
from stargon.evaluate.holdout import resample
from stargon.model.batch import continuum_degree, make_batch
from stargon.model.continuum import solve_continuum
from stargon.model.decoder import ModelConfig
from stargon.model.gon import StarGON
from stargon.surveys import Spectrum
from stargon.surveys.instruments import LAMOST
from tests.oracle import convolve_lsf, pixel_widths

H_ALPHA = 6564.61  # vacuum Å
LINE_CONFIG = ModelConfig(latent_dim=2, n_basis=2, hidden=8, wave_min=6000.0, wave_max=7200.0)


pytestmark = pytest.mark.usefixtures("float64")  # physics in double precision


def model_with_a_line(
    centre: float = H_ALPHA, sigma_ln: float = 5e-5, config: ModelConfig = LINE_CONFIG
) -> StarGON:
    """A StarGON whose mean spectrum T₀ is a flat continuum with one Gaussian absorption line
    (σ in ln λ) at `centre`: what it draws is the forward model acting on a known spectrum."""
    model = StarGON(config)
    ln_grid = math.log(config.wave_min) + config.ln_step * torch.arange(
        config.n_table, dtype=torch.float64
    )
    line = 1 - 0.6 * torch.exp(-0.5 * ((ln_grid - math.log(centre)) / sigma_ln) ** 2)
    with torch.no_grad():
        model.decoder.table.data = model.decoder.table.data.double()
        model.decoder.table[0] = line
    return model


def drawn(model: StarGON, wave: np.ndarray, v_kms: float, resolving_power: float) -> np.ndarray:
    """T₀ as the model observes it at `wave`: Doppler, LSF and pixels applied."""
    with torch.no_grad():
        basis = model.observation_basis(torch.as_tensor(wave), v_kms, resolving_power)
    return basis[0].numpy()


def centroid(wave: np.ndarray, flux: np.ndarray) -> float:
    depth = 1 - flux
    return float(np.sum(wave * depth) / np.sum(depth))


def fwhm(wave: np.ndarray, flux: np.ndarray) -> float:
    """FWHM of one absorption line, by linear interpolation of the half-depth crossings."""
    depth = 1 - flux
    half = depth.max() / 2
    above = np.flatnonzero(depth >= half)
    lo, hi = above[0], above[-1]

    def cross(i: int, j: int) -> float:
        return wave[i] + (half - depth[i]) * (wave[j] - wave[i]) / (depth[j] - depth[i])

    return cross(hi, hi + 1) - cross(lo - 1, lo)


def test_halpha_shifted_by_100_kms_lands_at_6566_80():
    assert physics.rest_to_observed(H_ALPHA, 100.0) == pytest.approx(6566.80, abs=0.005)
    assert physics.observed_to_rest(6566.7997, 100.0) == pytest.approx(H_ALPHA, abs=1e-4)
    assert physics.velocity_of_factor(physics.doppler_factor(-321.0)) == pytest.approx(-321.0)


@pytest.mark.parametrize("v_kms", [100.0, -300.0])
def test_the_model_draws_a_rest_frame_line_where_doppler_puts_it(v_kms):
    """Hα in the decoder's rest frame, observed from a star at v: the drawn line's centre is
    λ_rest (1 + v/c) — 6566.80 Å at +100 km/s — to a thousandth of an Å."""
    model = model_with_a_line()
    wave = np.arange(6550.0, 6580.0, 0.002)
    seen = centroid(wave, drawn(model, wave, v_kms, math.inf))
    assert seen == pytest.approx(H_ALPHA * (1 + v_kms / 299792.458), abs=1e-3)
    if v_kms == 100.0:
        assert seen == pytest.approx(6566.80, abs=0.005)


def test_each_spectrum_of_a_batch_gets_its_own_velocity():
    model = model_with_a_line()
    wave = torch.as_tensor(np.arange(6550.0, 6580.0, 0.002)).expand(2, -1)
    with torch.no_grad():
        basis = model.observation_basis(wave, torch.tensor([0.0, 250.0]), math.inf)
    centres = [centroid(wave[i].numpy(), basis[0, i].numpy()) for i in range(2)]
    assert centres[0] == pytest.approx(H_ALPHA, abs=1e-3)
    assert centres[1] - centres[0] == pytest.approx(H_ALPHA * 250.0 / physics.C_KMS, abs=1e-3)


@pytest.mark.parametrize("resolving_power", [1800.0, 22500.0])
def test_the_model_lsf_has_the_width_of_an_independent_convolution(resolving_power):
    """The decoder's pyramid LSF against `oracle.convolve_lsf` of the same sharp spectrum: the
    line's FWHM within 1 % and its equivalent width (the flux integral) within 0.5 %."""
    model = model_with_a_line(sigma_ln=1.5e-5)  # intrinsically narrower than either LSF
    half_width = 12 * H_ALPHA / resolving_power
    wave = np.arange(H_ALPHA - half_width, H_ALPHA + half_width, half_width / 1500)
    sharp = drawn(model, wave, 0.0, math.inf)
    blurred = drawn(model, wave, 0.0, resolving_power)
    depth = convolve_lsf(torch.as_tensor(wave), torch.as_tensor(1 - sharp), resolving_power)
    reference = 1 - depth.numpy()
    expected = math.hypot(fwhm(wave, sharp), H_ALPHA / resolving_power)
    assert fwhm(wave, reference) == pytest.approx(expected, rel=0.01)  # the oracle is right
    assert fwhm(wave, blurred) == pytest.approx(fwhm(wave, reference), rel=0.01)
    width = np.gradient(wave)
    assert np.sum((1 - blurred) * width) == pytest.approx(np.sum((1 - sharp) * width), rel=5e-3)


def test_oracle_lsf_keeps_the_flux_integral_on_a_nonuniform_grid():
    gen = torch.Generator().manual_seed(1)
    steps = torch.exp(torch.linspace(math.log(0.5), math.log(1.5), 3000))
    wave = 5000.0 + torch.cumsum(steps * (1 + 0.3 * torch.rand(3000, generator=gen)), 0)
    flux = 1 + torch.rand(2, wave.numel(), generator=gen)
    widths = pixel_widths(wave)
    out = convolve_lsf(wave, flux, 1500.0)
    assert torch.allclose((out * widths).sum(-1), (flux * widths).sum(-1), rtol=1e-6, atol=0)


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
    assert physics.air_to_vacuum(air) == pytest.approx(vacuum, abs=0.006)
    assert physics.vacuum_to_air(vacuum) == pytest.approx(air, abs=0.006)


def test_air_vacuum_round_trip_and_uv_untouched():
    wave = np.linspace(2000.0, 25000.0, 5001)
    assert np.abs(physics.vacuum_to_air(physics.air_to_vacuum(wave)) - wave).max() < 1e-6
    uv = np.array([1215.67, 1549.0])
    np.testing.assert_array_equal(physics.air_to_vacuum(uv), uv)


def test_resample_interpolates_and_propagates_ivar():
    wave_in = torch.arange(10.0) + 5000
    flux_in = 2 * wave_in - 3
    ivar_in = torch.ones(10)
    ivar_in[6] = 0
    wave_out = torch.tensor([5000.5, 5002.25, 5005.5, 5004.0, 4999.0, 5010.0])
    flux_out, ivar_out = resample(wave_in, flux_in, ivar_in, wave_out)
    assert torch.allclose(flux_out[:4], 2 * wave_out[:4] - 3)
    # midpoint: var = 0.25 + 0.25 → ivar 2; quarter point: 0.5625 + 0.0625 → ivar 1.6
    assert ivar_out[0].item() == pytest.approx(2.0)
    assert ivar_out[1].item() == pytest.approx(1.6)
    assert ivar_out[2].item() == 0  # leans on the masked pixel 6
    assert ivar_out[3].item() == pytest.approx(1.0)  # on a pixel: untouched
    assert ivar_out[4].item() == 0 and ivar_out[5].item() == 0  # outside the input range


def lamost_like(normalised: bool, continuum) -> tuple[Spectrum, np.ndarray]:
    """A LAMOST-grid spectrum: a line-rich shape times `continuum(x, arm)`, with cosmic rays."""
    wave = LAMOST.pixels()
    rng = np.random.default_rng(3)
    shape = 1 - 0.4 * rng.random(wave.size)
    segments = LAMOST.segments(wave)
    true = np.empty_like(wave)
    for arm, (start, stop) in enumerate(segments):
        part = wave[start:stop]
        x = 2 * (part - part[0]) / (part[-1] - part[0]) - 1
        true[start:stop] = continuum(x, arm)
    flux, ivar = shape * true, np.ones_like(wave)
    flux[::17], ivar[::17] = 1e6, 0.0  # masked cosmic rays must not pull the fit
    spectrum = Spectrum(
        wave, flux, ivar, LAMOST.name, LAMOST.resolving_power, "observed", normalised,
        "synthetic-continuum", "test", segments, synthetic=True,
    )  # fmt: skip
    return spectrum, shape


def solved_continuum(spectrum: Spectrum, shape: np.ndarray) -> np.ndarray:
    """The continuum the model would solve, through `make_batch`'s design (as fitting does),
    in a batch shared with a spectrum of the other kind (so each row's own degree must hold)."""
    partner, _ = lamost_like(not spectrum.normalised, lambda x, arm: 1 + 0 * x)
    batch = make_batch([spectrum, partner], dtype=torch.float64)
    model = torch.as_tensor(shape[spectrum.valid])[None]
    solved = solve_continuum(batch.design[:1], batch.flux[:1], batch.ivar[:1], model)
    return solved[0].numpy() * batch.scale[0].item()


def test_a_flux_calibrated_continuum_of_the_instruments_degree_is_recovered_per_arm():
    assert continuum_degree(lamost_like(False, lambda x, a: 1 + 0 * x)[0]) == 6

    def sed(x, arm):  # a degree-6 polynomial, different in each arm
        return (2 + arm) + 0.3 * x - 0.2 * x**2 + 0.05 * x**5 - 0.04 * (1 + arm) * x**6

    spectrum, shape = lamost_like(False, sed)
    recovered = solved_continuum(spectrum, shape)
    truth = spectrum.flux[spectrum.valid] / shape[spectrum.valid]
    good = spectrum.ivar[spectrum.valid] > 0
    np.testing.assert_allclose(recovered[good], truth[good], rtol=1e-6)


def test_a_normalised_spectrum_keeps_structure_beyond_a_quadratic_tilt():
    """Normalised spectra get degree 2: a degree-4 ripple is left to the model, not absorbed."""
    assert continuum_degree(lamost_like(True, lambda x, a: 1 + 0 * x)[0]) == 2

    def ripple(x, arm):
        return 1 + 0.05 * x - 0.03 * x**2 + 0.1 * (35 * x**4 - 30 * x**2 + 3) / 8

    spectrum, shape = lamost_like(True, ripple)
    recovered = solved_continuum(spectrum, shape)
    truth = spectrum.flux[spectrum.valid] / shape[spectrum.valid]
    good = spectrum.ivar[spectrum.valid] > 0
    assert np.abs(recovered[good] - truth[good]).max() > 0.05  # the P₄ ripple stays out
