"""The explorer without a browser: state, physics of the view, uploads, fits, exports, plots."""

from __future__ import annotations

import gc
import io
from dataclasses import replace

import numpy as np
import param
import pytest
import torch
from astropy.io import fits
from astropy.table import Table
from panel.io.location import Location

from stargon.assets import line_list
from stargon.core.physics import C_KMS
from stargon.core.spectrum import SpectrumReadError
from stargon.evaluate.sensitivity import latent_sensitivity, rest_grid
from stargon.explorer import plots
from stargon.explorer.app import ExplorerApp
from stargon.explorer.state import Explorer
from stargon.model.batch import make_batch
from stargon.model.decoder import BasisDecoder
from stargon.surveys import read_file
from stargon.surveys.fetch import FetchError, lamost_spectrum
from tests.archive_server import ArchiveServer

LAMOST = "lamost_dr1/SampleFits/spec-55862-B6212_sp06-003.fits"
LAMOST_DR8 = "lamost_dr8/20220313_CCF_test_grouped_fits/spec-55859-F5902_sp03-232.fits.gz"


@pytest.fixture(scope="module")
def explorer(data):
    return Explorer(None, data)


def test_latent_and_velocity_sliders_change_the_spectrum_as_physics_says(explorer):
    view = explorer.new_view()
    wave, flux = explorer.spectrum(view)
    view.z = view.z + 0.5 * (explorer.high - explorer.low) * np.eye(explorer.latent_dim)[0]
    _, moved = explorer.spectrum(view)
    assert np.abs(moved - flux).max() > 1e-3
    # v = +100 km/s on the same pixels: f_v(λ) = f_0(λ / (1 + v/c)); the best-matching shift
    view.v_kms = 100.0
    _, shifted = explorer.spectrum(view)
    trials = np.arange(80.0, 120.01, 0.25)
    inner = slice(100, -100)
    misfit = [
        np.sum((shifted - np.interp(wave / (1 + v / C_KMS), wave, moved))[inner] ** 2)
        for v in trials
    ]
    assert trials[int(np.argmin(misfit))] == pytest.approx(100.0, abs=1.0)
    view.frame = "rest"
    np.testing.assert_allclose(explorer.axis(view), wave / (1 + 100.0 / C_KMS))


def test_sensitivity_is_the_derivative_of_the_shown_spectrum(explorer):
    view = explorer.new_view()
    sensitivity = explorer.sensitivity(view)
    assert sensitivity.shape == (explorer.latent_dim, explorer.pixels(view)[0].size)
    eps = 1e-3
    for k in (0, explorer.latent_dim - 1):
        up, down = explorer.new_view(), explorer.new_view()
        up.z[k] += eps
        down.z[k] -= eps
        # the pseudo-continuum held at the view's, as the page holds it during a drag
        continuum = explorer.drawing(view)[3]
        raw_up, raw_down = explorer.drawing(up)[1], explorer.drawing(down)[1]
        numeric = np.abs(raw_up - raw_down) / (2 * eps) / continuum
        np.testing.assert_allclose(sensitivity[k], numeric, atol=0.02 * numeric.max())


def test_the_url_and_the_widgets_follow_a_state_change_made_in_python(explorer):
    """A page's state set in Python moves its widgets and its URL; a page opened at that URL
    starts in the same state; a URL's malformed values keep their defaults, not the others'."""
    sharing = ExplorerApp(explorer, location=Location())
    z = np.linspace(-1, 1, explorer.latent_dim)
    sharing.state.show(replace(sharing.view, z=z, v_kms=-42.5, instrument="apogee",
                               frame="rest", zoom="Brackett 11"))  # fmt: skip
    assert [s.value for s in sharing.sliders] == pytest.approx(z)
    assert sharing.rv.value == -42.5 and sharing.instrument.value == "apogee"
    assert (sharing.frame.value, sharing.zoom.value) == ("rest", "Brackett 11")
    opened = ExplorerApp(explorer, location=Location(search=sharing.location.search))
    np.testing.assert_allclose(opened.view.z, z)
    assert (opened.view.v_kms, opened.view.instrument, opened.view.frame, opened.view.zoom) == (
        -42.5, "apogee", "rest", "Brackett 11")  # fmt: skip
    typos = "?w0=nope&w1=0.5&v=fast&instrument=hubble"
    broken = ExplorerApp(explorer, location=Location(search=typos))
    assert broken.view.z[0] == explorer.centre[0] and broken.view.z[1] == 0.5
    assert (broken.view.v_kms, broken.view.instrument) == (0.0, "miles")


def test_upload_of_a_real_file_is_fitted_and_bad_uploads_say_why(explorer, data):
    content = (data / LAMOST).read_bytes()
    spectrum = explorer.read_upload("my star.fits", content)
    view = explorer.fit(explorer.new_view(), spectrum)
    fit = view.observation.fit
    assert view.v_kms == fit.v_kms and np.allclose(view.z, explorer.whitening.whiten(fit.z))
    assert 0.3 < fit.chi2_dof < 20 and abs(fit.v_kms - spectrum.labels["rv"]) < 30
    assert explorer.spectrum(view)[0].size == view.observation.residual_sigma.size
    with pytest.raises(SpectrumReadError, match=r"my star\.fits"):
        explorer.read_upload("my star.fits", content[: len(content) // 3])
    with pytest.raises(SpectrumReadError, match=r"notes\.txt"):
        explorer.read_upload("notes.txt", b"hello")


def test_export_writes_the_shown_spectrum_with_units(explorer):
    view = explorer.new_view()
    view.instrument = "galah"
    with fits.open(io.BytesIO(explorer.export(view, "fits"))) as hdus:
        table = hdus[1].data
        assert hdus[1].columns["wavelength"].unit == "Angstrom"
        np.testing.assert_allclose(table["flux"], explorer.spectrum(view)[1], rtol=1e-6)
    assert b"wavelength" in explorer.export(view, "csv")


def test_teaching_view_follows_physics(explorer):
    hot = explorer.from_labels(explorer.new_view(), 7500, 4.2, 0.0)
    cool = explorer.from_labels(explorer.new_view(), 4200, 4.5, 0.0)
    wave, hot_flux = explorer.spectrum(hot)
    _, cool_flux = explorer.spectrum(cool)
    h_alpha = np.abs(wave - 6564.61) < 3
    na_d = np.abs(wave - 5894.5) < 5
    assert hot_flux[h_alpha].min() < cool_flux[h_alpha].min()  # Balmer lines grow with Teff
    assert cool_flux[na_d].min() < hot_flux[na_d].min()  # Na D grows as Teff falls


def test_teaching_sliders_move_the_shown_star_along_label_directions(explorer, data):
    """From a real star, Teff +1,000 K deepens its Hβ; two steps of +500 K land where one of
    +1,000 K does (continuous, no jump to other stars); the app's slider does the same move."""
    star = read_file(sorted(data.glob("miles/MILES_*.fits"))[100])[0]
    view = explorer.fit(explorer.new_view(), star)
    hotter = explorer.along_labels(view, teff=1000.0)
    twice = explorer.along_labels(explorer.along_labels(view, teff=500.0), teff=500.0)
    np.testing.assert_allclose(twice.z, hotter.z, atol=1e-12)
    wave, before = explorer.spectrum(view)
    _, after = explorer.spectrum(hotter)
    h_beta = np.abs(wave - 4862.68) < 2
    assert after[h_beta].min() < before[h_beta].min() - 0.02
    with pytest.raises(ValueError, match="unknown labels"):
        explorer.along_labels(view, vmacro=1.0)
    app = ExplorerApp(explorer)
    app._apply(view)
    with param.edit_constant(app.teff):
        app.teff.value_throttled = app.teff.value + 1000.0
    np.testing.assert_allclose(app.view.z, hotter.z, atol=1e-12)


def test_the_page_measures_the_chosen_line_of_the_fitted_star(explorer, data):
    app = ExplorerApp(explorer)
    assert app.measure.options == [] and app.measured.object == ""
    star = read_file(sorted(data.glob("miles/MILES_*.fits"))[100])[0]
    app._show_fit(star, "a MILES star")
    assert "Hβ" in app.measure.options and "Ca II 8544" not in app.measure.options
    app.measure.value = "Hβ"
    expected = explorer.measure_line(app.view, "Hβ")["data"]
    assert f"data {expected.equivalent_width:.3f} ± {expected.equivalent_width_error:.3f}" in (
        app.measured.object
    )
    app._apply(explorer.new_view())  # no star: nothing to measure
    assert app.measure.options == [] and app.measured.object == ""


def test_sensitive_spans_shade_and_name_a_line():
    x = np.linspace(6500, 6630, 1000)
    sensitivity = np.exp(-0.5 * ((x - 6564.61) / 1.5) ** 2)
    spans, labels = plots.sensitive_spans(x, sensitivity)
    assert len(spans) == 1 and spans[0][0] < 6564.61 < spans[0][1]
    assert labels[0][1] == "Hα"
    context = plots.spectrum_context(x, (x, 1 - sensitivity), spans, labels)
    np.testing.assert_allclose(context.get(2).dimension_values("observed"), 1 - sensitivity)
    assert context.get(3).dimension_values("line")[0] == "Hα"


def test_app_redraws_from_its_own_state(explorer):
    first, second = ExplorerApp(explorer), ExplorerApp(explorer)
    before = first._model().dimension_values("flux")
    slider = first.sliders[0]
    slider.value = slider.end  # a drag: the page draws it; the state waits for the release
    assert first.view.z[0] != slider.end
    with param.edit_constant(slider):
        slider.value_throttled = slider.end  # let go
    assert first.view.z[0] == slider.end
    after = first._model().dimension_values("flux")
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(second._model().dimension_values("flux"), before)
    first.rv.value = 250.0
    assert first.view.v_kms == 250.0 and second.view.v_kms == 0.0
    marker = first._marker().dimension_values(0)
    assert marker.size == 1 and marker[0] != second._marker().dimension_values(0)[0]
    assert len(first._points()) == len(explorer.stars)


def test_line_response_spans_the_latent_range_with_the_others_held(explorer):
    view = explorer.new_view()
    view.z = view.z + 0.1
    x, values, fluxes = explorer.line_response(view, latent=3, n_values=4)
    np.testing.assert_allclose(values[[0, -1]], [explorer.low[3], explorer.high[3]])
    for value, flux in zip(values, fluxes, strict=True):
        moved = explorer.new_view()
        moved.z = view.z.copy()
        moved.z[3] = value
        np.testing.assert_allclose(flux, explorer.spectrum(moved)[1], atol=1e-5)
    assert np.abs(fluxes[-1] - fluxes[0]).max() > 1e-3
    window = plots.focus_window(x, explorer.sensitivity(view)[3])
    overlay = plots.line_response(x, values, fluxes, 3, window)
    assert len(overlay) == 4 and window[0] < window[1]


def test_a_line_response_around_a_window_is_the_whole_spectrum_s_there(explorer):
    """Around a window, the response decodes only the stretches between gaps that reach into
    it (GALAH's arms): what it gives must be the whole spectrum's response at those pixels,
    pseudo-continuum included."""
    view = explorer.new_view()
    view.instrument = "galah"
    view.z = view.z - 0.2
    x, values, whole = explorer.line_response(view, latent=1)
    around = (6540.0, 6590.0)  # Hα, in the red arm
    part_x, part_values, part = explorer.line_response(view, latent=1, around=around)
    assert part_x.size < x.size / 2 and part_x[0] <= around[0] and part_x[-1] >= around[1]
    start = int(np.searchsorted(x, part_x[0]))
    np.testing.assert_array_equal(part_x, x[start : start + part_x.size])
    np.testing.assert_array_equal(part_values, values)
    np.testing.assert_allclose(part, whole[:, start : start + part_x.size], rtol=1e-12)


def _rendered(element) -> list[dict]:
    """The data of each glyph source HoloViews draws the element (or overlay) from."""
    import holoviews as hv

    plot = hv.renderer("bokeh").get_plot(element)
    subplots = plot.subplots.values() if hasattr(plot, "subplots") and plot.subplots else [plot]
    return [dict(sub.handles["source"].data) for sub in subplots if "source" in sub.handles]


def test_columns_written_after_a_release_are_those_holoviews_draws(explorer):
    """`explorer.live` writes the shading, its labels, the marker and the line response's
    curves into the page's sources without HoloViews: the columns must be the ones HoloViews
    itself draws from the same elements (names and values), or the page shows other data."""
    view = explorer.new_view()
    view.instrument, view.latent = "galah", 2
    view.z = view.z + 0.3
    x = explorer.axis(view)
    spans, labels = plots.sensitive_spans(x, explorer.sensitivity(view)[2])
    assert spans and labels
    context = _rendered(plots.spectrum_context(x, None, spans, labels))
    for written in (plots.span_columns(spans), plots.label_columns(labels)):
        drawn = next(data for data in context if set(data) == set(written))
        for name, values in written.items():
            assert list(drawn[name]) == list(values), name
    marker = np.array([0.3, -1.2])
    (drawn,) = _rendered(plots.latent_marker(marker))
    written = plots.marker_columns(marker)
    assert set(drawn) == set(written)
    assert all(list(drawn[name]) == list(written[name]) for name in written)
    xs, values, fluxes = explorer.line_response(view, 2)
    window = plots.focus_window(xs, explorer.sensitivity(view)[2])
    element = plots.line_response(xs, values, fluxes, 2, window)
    assert [curve.label for curve in element] == plots.response_labels(2, values)
    assert all(set(data) == {"wavelength", "flux"} for data in _rendered(element))
    low, high = plots.response_ylim(xs, fluxes, window)
    inside = (xs >= window[0]) & (xs <= window[1])
    assert low < fluxes[:, inside].min() < fluxes[:, inside].max() < high


def test_star_list_filters_by_survey_and_labels(explorer):
    everyone = explorer.find_stars()
    assert everyone == list(range(len(explorer.stars)))
    giants = explorer.find_stars("miles", teff=(4000, 5200), logg=(0.5, 3.0))
    assert 0 < len(giants) < len(explorer.find_stars("miles"))
    for i in giants:
        star = explorer.stars[i]
        assert star["survey"] == "miles" and 4000 <= star["teff"] <= 5200 and star["logg"] <= 3
    with pytest.raises(ValueError, match="colour"):
        explorer.find_stars(colour=(0, 1))


def test_archive_fetch_by_id_gives_a_fittable_spectrum_and_clear_errors(
    explorer, data, tmp_path, monkeypatch
):
    remote = lamost_spectrum(103232, "dr8")
    with ArchiveServer({"/" + remote.path: data / LAMOST_DR8}) as server:
        monkeypatch.setattr(explorer, "archive_url", server.url)
        monkeypatch.setattr(explorer, "cache", tmp_path)
        spectrum = explorer.fetch_star("LAMOST DR8 obsid", " 103232 ")
        assert spectrum.instrument == "LAMOST LRS" and spectrum.n_pixels == 3906
        fit = explorer.fit(explorer.new_view(), spectrum).observation.fit
        assert 0.3 < fit.chi2_dof < 20
        with pytest.raises(ValueError, match="not an id of that kind"):
            explorer.fetch_star("LAMOST DR8 obsid", "HD 12345")
        with pytest.raises(FetchError, match="404"):
            explorer.fetch_star("LAMOST DR8 obsid", "7")


def test_png_export_draws_the_shown_view(explorer, data):
    app = ExplorerApp(explorer)
    plain = app._png()
    assert plain.startswith(b"\x89PNG")
    app._fit(explorer.read_upload("star.fits", (data / LAMOST).read_bytes()), "a star")
    with_fit = app._png()
    height = int.from_bytes(with_fit[20:24], "big")
    assert height > int.from_bytes(plain[20:24], "big")  # a residual panel was added


def test_sliders_are_whitened_and_the_fit_band_is_the_latent_covariance(explorer, data):
    """Sliders move decorrelated unit-variance directions of the training stars; a fitted
    star's ±1σ band is the spread of spectra drawn from its latent covariance."""
    train = np.array([not star["held_out"] for star in explorer.stars])
    w = explorer.star_latents[train]
    np.testing.assert_allclose(w.std(axis=0), 1.0, rtol=0.05)
    correlation = np.corrcoef(w.T) - np.eye(w.shape[1])
    assert np.abs(correlation).max() < 0.05
    view = explorer.fit(explorer.new_view(), read_file(data / LAMOST)[0])
    fit, band = view.observation.fit, view.observation.model_sigma
    assert band.shape == fit.normalised_model.shape and np.all(band > 0)
    rng = np.random.default_rng(0)
    draws = rng.multivariate_normal(fit.z, fit.z_cov, 400)
    spectrum = view.observation.spectrum
    basis = explorer.model.observation_basis(
        torch.as_tensor(spectrum.wave[spectrum.valid]), fit.v_kms,
        torch.as_tensor(np.broadcast_to(spectrum.resolving_power, spectrum.wave.shape)[
            spectrum.valid].copy()), explorer.fitter.pyramid,
    )  # fmt: skip
    with torch.no_grad():
        spread = explorer.model.observe(torch.as_tensor(draws).float(), basis).std(0)
    ratio = np.median(spread.numpy() / band)
    assert 0.8 < ratio < 1.2, ratio


def test_each_fitted_star_is_drawn_on_its_own_pixels(explorer, data):
    """Fitting rest-frame stars one after another (v = 0 each time, the views dropped between):
    every view is drawn and exported on its own star's pixels — never on a basis cached for an
    earlier star whose object id Python has reused."""
    stars = [read_file(next((data / "galah_dr4").rglob("*.fits")))[0],
             read_file(next((data / "apogee_dr17").glob("apStar*.fits")))[0]]  # fmt: skip
    for _ in range(3):
        for star in stars:
            view = explorer.fit(explorer.new_view(), star)
            wave, flux = explorer.spectrum(view)
            assert wave.size == flux.size == int(star.valid.sum())
            table = Table.read(explorer.export(view, "csv").decode(), format="ascii.ecsv")
            assert len(table) == int(star.valid.sum())
            del view
            gc.collect()
    # Python may give a new observation the id() of a freed one (the loop above could not force
    # it here): the basis cache keys on a serial that is never reused, not on id().
    first, second = (explorer.fit(explorer.new_view(), star) for star in stars)
    assert explorer.basis_key(first) != explorer.basis_key(second)
    assert explorer.basis_key(first)[0] == ("observation", first.observation.serial)


def test_the_first_view_spans_the_instruments_pixels_and_gaps_are_breaks(explorer):
    """The page as Panel builds it: the spectrum's wavelength axis starts at the instrument's
    first pixel (an empty residual plot, linked to it, once pulled it to 0 Å); in GALAH's four
    arms the model curve is broken between arms, not drawn across."""
    import bokeh.models
    import panel as pn

    app = ExplorerApp(explorer)
    figures = pn.panel(app).get_root().select({"type": bokeh.models.Plot})
    spectrum = next(f for f in figures if f.yaxis[0].axis_label == "normalised flux"
                    and f.y_range.start == plots.FLUX_RANGE[0])  # fmt: skip
    wave = explorer.instruments[app.view.instrument].pixels()
    assert spectrum.x_range.start == pytest.approx(wave[0], abs=1.0)
    assert spectrum.x_range.end == pytest.approx(wave[-1], abs=1.0)

    app.state.instrument = "galah"
    curve = app._model()
    x = curve.dimension_values(0)
    breaks = np.flatnonzero(np.isnan(x))
    assert breaks.size == 3  # between the four arms
    pieces = np.split(x, breaks)
    assert all(np.nanmax(np.diff(p[~np.isnan(p)])) < 0.1 for p in pieces)  # Å: within an arm


def test_the_drawn_model_sits_at_one_on_every_instrument(explorer):
    """The slider view draws the model over its own pseudo-continuum, as fits show it: the
    median of its top decile is 1 within 0.02 on each instrument's pixels."""
    for name in explorer.instruments:
        view = explorer.new_view()
        view.instrument = name
        _, flux = explorer.spectrum(view)
        top = np.sort(flux)[int(0.9 * flux.size) :]
        assert np.median(top) == pytest.approx(1.0, abs=0.02), name


def test_one_jacobian_serves_the_explorer_the_evaluation_and_training(explorer, monkeypatch):
    """∂f/∂z is `BasisDecoder.decode_with_jacobian`, equal to autograd's; the explorer's
    shading, the evaluation's sensitivity and the training's Gauss–Newton step all move when
    it alone is changed (here doubled), so none computes its own."""
    view = explorer.new_view()
    fitter, basis = explorer.fitter, explorer._basis(view)
    z = explorer.raw(view.z[None])
    found = fitter.jacobian(z, basis)[0]
    expected = torch.autograd.functional.jacobian(
        lambda latent: explorer.model.observe(latent[None], basis)[0], z[0]
    )
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-6 * expected.abs().max())
    continuum = explorer.drawing(view)[3]
    for latent in (0, 5):  # along one whitened direction alone, as the page shades it
        along = np.abs(expected.double().numpy() @ explorer.whitening.matrix[:, latent])
        np.testing.assert_allclose(explorer.sensitivity(view, latent), along / continuum,
                                   rtol=1e-3, atol=1e-5 * along.max())  # fmt: skip

    wave = rest_grid(5000, 5200, 5000)
    batch = make_batch([read_file(explorer.data / LAMOST)[0]], n_pixels=500,
                       rngs=[np.random.default_rng(0)])  # fmt: skip
    step_basis = explorer.model.basis(batch, fitter.pyramid)

    def uses():
        return (
            explorer.sensitivity(view),
            latent_sensitivity(fitter, z, wave),
            explorer.model.gauss_newton(z, step_basis, batch, 1.0)[1],
            explorer.sensitivity(view, 3),
        )

    before = uses()
    decode_with_jacobian = BasisDecoder.decode_with_jacobian

    def doubled(self, z, basis, directions=None):
        decoded, jacobian = decode_with_jacobian(self, z, basis, directions)
        return decoded, 2 * jacobian

    monkeypatch.setattr(BasisDecoder, "decode_with_jacobian", doubled)
    explorer._drawn.clear()  # the explorer keeps the latest views' sensitivities
    after = uses()
    np.testing.assert_allclose(after[0], 2 * before[0], rtol=1e-5)
    np.testing.assert_allclose(after[1], 2 * before[1], rtol=1e-5)
    assert not torch.allclose(after[2], before[2])  # the normal matrix JᵀWJ + Λ
    np.testing.assert_allclose(after[3], 2 * before[3], rtol=1e-5)


def test_random_stars_in_the_apogee_view_show_no_hump_at_brackett_11(explorer):
    """The page's "Random star from the prior" in the APOGEE view, 100 draws shown as the page
    shows them (over the model's own pseudo-continuum, rest frame): no flux above 1.05 within
    ±5 Å of Brackett 11. The view draws from the density of the H-band stars (`view_priors`);
    the global one, 98 % optical stars, left the H band free and drew a hump there."""
    centre = {line.name: line.wavelength for line in line_list()}["Br11"]
    view = explorer.new_view()
    view.instrument, view.frame = "apogee", "rest"
    peaks = []
    for seed in range(100):
        wave, flux = explorer.spectrum(explorer.random_view(view, seed))
        near = np.abs(wave - centre) <= 5.0
        assert near.sum() > 10
        peaks.append(flux[near].max())
    assert max(peaks) <= 1.05, np.round(sorted(peaks)[-5:], 3)
