"""Line depths and equivalent widths: against specutils on the same pixels, their errors
against noise drawn many times, and in the explorer on a fitted real star."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from specutils import Spectrum as SpecutilsSpectrum
from specutils.analysis import equivalent_width

from stargon.core.line_measurement import line_strength
from stargon.explorer.state import Explorer
from stargon.surveys import read_file


@pytest.fixture(scope="module")
def h_beta(data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real MILES star's Hβ ± 8 Å, over a straight continuum through the window's ends."""
    star = read_file(sorted(data.glob("miles/MILES_*.fits"))[100])[0]
    inside = np.abs(star.wave - 4862.68) <= 8.0
    wave, flux = star.wave[inside], star.flux[inside]
    ends = np.r_[flux[:3].mean(), flux[-3:].mean()]
    continuum = np.interp(wave, wave[[1, -2]], ends)
    return wave, flux / continuum, 1.0 / np.sqrt(star.ivar[inside]) / continuum


def test_the_equivalent_width_is_specutils_on_the_same_pixels(h_beta):
    wave, flux, sigma = h_beta
    ours = line_strength(wave, flux, sigma)
    spectrum = SpecutilsSpectrum(flux=flux * u.dimensionless_unscaled, spectral_axis=wave * u.AA)
    theirs = equivalent_width(spectrum, continuum=1)
    assert ours.equivalent_width == pytest.approx(theirs.to_value(u.AA), rel=1e-9)
    assert ours.equivalent_width > 1.0 and ours.depth == pytest.approx(1 - flux.min())


def test_the_errors_are_the_spread_of_noisy_copies(h_beta):
    wave, flux, sigma = h_beta
    expected = line_strength(wave, flux, sigma)
    rng = np.random.default_rng(0)
    widths = [line_strength(wave, flux + rng.normal(0, sigma), sigma).equivalent_width
              for _ in range(4000)]  # fmt: skip
    assert np.std(widths) == pytest.approx(expected.equivalent_width_error, rel=0.05)
    with pytest.raises(ValueError, match="at least 2 pixels"):
        line_strength(wave[:1], flux[:1], sigma[:1])


@pytest.mark.slow  # fits a real star with the embedded model
def test_the_explorer_measures_a_line_in_the_data_and_the_model(data):
    explorer = Explorer(None, data)
    star = read_file(sorted(data.glob("miles/MILES_*.fits"))[100])[0]
    with pytest.raises(ValueError, match="fit or load a star first"):
        explorer.measure_line(explorer.new_view(), "Hβ")
    view = explorer.fit(explorer.new_view(), star)
    for name in ("Hβ", "Hα", "Mg b2"):
        measured = explorer.measure_line(view, name)
        data_line, model_line = measured["data"], measured["model"]
        assert data_line.equivalent_width > 0.3 and model_line.equivalent_width_error > 0
        spread = np.hypot(data_line.equivalent_width_error, model_line.equivalent_width_error)
        assert abs(data_line.equivalent_width - model_line.equivalent_width) < 4 * spread, name
        low, high = measured["window"]
        assert low < 4862.68 * (1 + view.v_kms / 299792.458) < high or name != "Hβ"
    with pytest.raises(ValueError, match="outside this spectrum"):
        explorer.measure_line(view, "Ca II 8544")
    with pytest.raises(ValueError, match="unknown line"):
        explorer.measure_line(view, "Unobtainium 5000")
