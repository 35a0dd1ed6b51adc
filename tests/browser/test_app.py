"""The explorer in a real Chromium (Debian's `chromium`, driven by Playwright) against a real
`stargon serve` on 127.0.0.1. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from stargon.explorer.client import MOVE_SLIDER_JS
from stargon.surveys.fetch import lamost_spectrum
from tests.archive_server import ArchiveServer

pytestmark = pytest.mark.slow  # end to end: a served app in Chromium

playwright = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAMOST = "lamost_dr1/SampleFits/spec-55862-B6212_sp06-003.fits"
LAMOST_DR8 = "lamost_dr8/20220313_CCF_test_grouped_fits/spec-55859-F5902_sp03-232.fits.gz"
FLUX_SUMS = """() => {
  const sums = [];
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (model.data && model.data.flux)
        sums.push(Array.from(model.data.flux).reduce((a, b) => a + b, 0));
  return sums;
}"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("STARGON_REQUIRE_BROWSER"):
            pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def archive(data):
    """A real HTTP server on 127.0.0.1 standing in for the LAMOST archive."""
    remote = lamost_spectrum(103232, "dr8")
    with ArchiveServer({"/" + remote.path: data / LAMOST_DR8}) as server:
        yield server


@pytest.fixture(scope="module")
def server(data, archive, tmp_path_factory):
    port = _free_port()
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cache = tmp_path_factory.mktemp("cache")
    command = [sys.executable, "-m", "stargon", "serve", "--port", str(port), "--data", str(data),
               "--archive-url", archive.url, "--cache", str(cache)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(process.stdout.read().decode())
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture
def page(browser, server, request):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server)
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=90_000)
    page.wait_for_function(f"({FLUX_SUMS})().length > 0", timeout=90_000)
    yield page
    page.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
    page.close()
    assert not errors, errors


def test_slider_move_changes_the_plotted_spectrum_and_the_url(page):
    page.wait_for_timeout(2000)  # the first render's data messages settle
    before = page.evaluate(FLUX_SUMS)
    w0 = "() => new URLSearchParams(window.location.search).get('w0')"
    url_before = page.evaluate(w0)  # null until the state first changes
    for _attempt in range(3):  # a key press before the slider's JS is ready is lost
        page.locator(".noUi-handle").first.focus()
        for _ in range(10):
            page.keyboard.press("ArrowRight")
        try:
            page.wait_for_function(f"() => ({w0})() !== {json.dumps(url_before)}", timeout=10_000)
            break
        except playwright.TimeoutError:
            continue
    changed = f"JSON.stringify(({FLUX_SUMS})()) !== {json.dumps(json.dumps(before))}"
    page.wait_for_function(changed, timeout=30_000)
    page.wait_for_timeout(1000)
    assert page.evaluate(FLUX_SUMS) != before


MODEL_FRAME = """() => {
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (model.tags && model.tags.length && model.tags[0] && model.tags[0].net) {
        const view = Bokeh.index.find_one(model.tags[0].plot);
        const canvas = view.canvas_view.el.getBoundingClientRect(), frame = view.frame.bbox;
        return {left: canvas.left, right: canvas.right, top: canvas.top + frame.top,
                bottom: canvas.top + frame.bottom, frame_left: canvas.left + frame.left,
                frame_right: canvas.left + frame.right};
      }
  return null;
}"""


def _model_red(png: bytes) -> int:
    """Pixels of the model curve's colour (#d62728) in a screenshot."""
    from io import BytesIO

    from PIL import Image

    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 170) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)).sum())


def test_the_curve_is_clipped_to_the_frame_from_the_first_paint(browser, server):
    """Zoomed to Hα in the GALAH view on load, before any slider moves: no pixel of the model
    curve lies left or right of the plot's frame (it once ran into both margins)."""
    page = browser.new_page(viewport={"width": 1600, "height": 1100})
    page.goto(server + "?instrument=galah&zoom=H%CE%B1")
    page.wait_for_function(f"({MODEL_FRAME})() !== null", timeout=90_000)
    page.wait_for_timeout(3000)  # the first render settles
    box = page.evaluate(MODEL_FRAME)
    height = box["bottom"] - box["top"]
    inside = {"x": box["frame_left"] + 2, "y": box["top"], "width": 50, "height": height}
    assert _model_red(page.screenshot(clip=inside)) > 0  # the curve is drawn, and seen red
    for x0, x1 in ((box["left"], box["frame_left"] - 1), (box["frame_right"] + 1, box["right"])):
        margin = {"x": x0, "y": box["top"], "width": x1 - x0, "height": height}
        assert _model_red(page.screenshot(clip=margin)) == 0, margin
    page.screenshot(path=ARTIFACTS / "clipped_on_first_paint.png")
    page.close()


def test_upload_of_a_real_lamost_file_shows_its_fit(page, data):
    page.locator("input[type=file]").set_input_files(str(data / LAMOST))
    page.get_by_text("χ²/dof").wait_for(timeout=90_000)
    text = page.get_by_text("χ²/dof").inner_text()
    assert "uploaded spec-55862-B6212_sp06-003.fits" in text and "km/s" in text


def test_upload_of_a_desi_coadd_shows_the_fit_of_its_first_target(page):
    """A DESI file (specutils ships two real cut-down ones) is fitted by a model that has never
    seen DESI: the decoder reads any wavelength at the arms' own resolution."""
    import specutils

    coadd = Path(specutils.__file__).parent / "io/default_loaders/tests/desi_test_data"
    page.locator("input[type=file]").set_input_files(str(coadd / "coadd-sv3-dark-26065.fits"))
    page.get_by_text("χ²/dof").wait_for(timeout=90_000)
    text = page.get_by_text("χ²/dof").inner_text()
    assert "uploaded coadd-sv3-dark-26065.fits" in text and "DESI" in text


def test_corrupted_upload_shows_a_message_not_a_traceback(page, data, tmp_path):
    broken = tmp_path / "broken.fits"
    broken.write_bytes((data / LAMOST).read_bytes()[:5000])
    page.locator("input[type=file]").set_input_files(str(broken))
    message = page.get_by_text("Could not read broken.fits")
    message.wait_for(timeout=60_000)
    assert "Traceback" not in page.content()


def test_fetch_from_the_archive_by_id_shows_its_fit(page, archive):
    page.get_by_placeholder("e.g. 101001").fill("103232")
    page.get_by_role("button", name="Fetch and fit").click()
    summary = page.get_by_text("χ²/dof")
    summary.wait_for(timeout=90_000)
    assert "LAMOST 103232" in summary.inner_text()
    assert any("103232" in path for path, _ in archive.requests)


SELECT_ON_MAP = """(index) => {
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (model.data && Object.keys(model.data).some((k) => k.includes("PC"))
          && model.data[Object.keys(model.data)[0]].length > 1) {
        model.selected.indices = [index];
        return true;
      }
  return false;
}"""


def test_selecting_a_star_on_the_latent_map_fits_it(page):
    from stargon.explorer.state import Explorer

    stars = Explorer(None).stars
    index = next(i for i, s in enumerate(stars) if s["survey"] == "miles")
    assert page.evaluate(SELECT_ON_MAP, index)  # what a tap on that point sends
    summary = page.get_by_text("χ²/dof")
    summary.wait_for(timeout=90_000)
    assert stars[index]["star_id"] in summary.inner_text()


def test_the_unusual_stars_list_sorts_and_fits_the_star_clicked(page):
    from stargon.explorer.state import Explorer

    explorer = Explorer(None)
    listed = explorer.unusual_stars()
    scores = [explorer.stars[i]["outlier_score"] for i in listed]
    assert scores == sorted(scores, reverse=True) and len(listed) == 50
    cells = page.locator('.tabulator-row .tabulator-cell[tabulator-field="star"]')
    cells.first.wait_for(timeout=30_000)
    assert cells.first.inner_text() == explorer.stars[listed[0]]["star_id"]  # most unusual first
    page.locator('.tabulator-col[tabulator-field="score"] .tabulator-col-title').click()
    least = explorer.stars[listed[-1]]["star_id"]
    playwright.expect(cells.first).to_have_text(least, timeout=10_000)  # sorted in the browser
    cells.first.click()  # the least unusual of the list, now at the top
    summary = page.get_by_text("χ²/dof")
    summary.wait_for(timeout=90_000)
    assert least in summary.inner_text()


LINE_NAMES = """() => {
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (model.data && model.data.line && model.tags && model.tags[0] && model.tags[0].at_most)
        return Array.from(model.data.line);
  return null;
}"""
SET_RANGE = """([start, end]) => {  // what a box zoom or a pan does to the spectrum's range
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (model.tags && model.tags.length && model.tags[0] && model.tags[0].net) {
        const range = model.tags[0].plot.x_range;
        range.start = start;
        range.end = end;
      }
}"""
LINE_TICK = """(name) => {  // the page position of a listed line's tick
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (model.tags && model.tags.length && model.tags[0] && model.tags[0].net) {
        const view = Bokeh.index.find_one(model.tags[0].plot);
        for (const other of doc.all_models)
          if (other.data && other.data.species && other.data.line) {
            const k = Array.from(other.data.line).indexOf(name);
            const canvas = view.canvas_view.el.getBoundingClientRect();
            return {x: canvas.left + view.frame.x_scale.compute(other.data.wavelength[k]),
                    y: canvas.top + view.frame.y_scale.compute(other.data.y[k])};
          }
      }
  return null;
}"""


def test_line_names_thin_with_zoom_and_a_click_on_a_line_measures_it(page):
    from stargon.assets import line_list
    from stargon.explorer.state import Explorer

    listed = {line.name: line.wavelength for line in line_list()}
    miles = next(i for i, s in enumerate(Explorer(None).stars) if s["survey"] == "miles")
    whole = page.evaluate(LINE_NAMES)
    assert 3 <= len(whole) <= 12  # the whole range: thinned, not all ~60 lines in view
    page.evaluate(SET_RANGE, [4800, 5300])
    page.wait_for_function(f"JSON.stringify(({LINE_NAMES})()) !== {json.dumps(json.dumps(whole))}")
    zoomed = page.evaluate(LINE_NAMES)
    assert all(4800 <= listed[name] <= 5300 for name in zoomed)  # v = 0 on a fresh page
    assert len(zoomed) > sum(4800 <= listed[name] <= 5300 for name in whole)
    assert page.evaluate(SELECT_ON_MAP, miles)  # fit a star: its lines can be measured
    page.get_by_text("χ²/dof").wait_for(timeout=90_000)
    page.wait_for_timeout(2000)
    page.evaluate(SET_RANGE, [4800, 4920])
    page.wait_for_timeout(1000)
    tick = page.evaluate(LINE_TICK, "Hβ")
    page.mouse.click(tick["x"], tick["y"])
    # A fit shows the first listed line's measurement (H10) at once: wait for Hβ's to replace it.
    measured = page.get_by_text(re.compile(r"^Hβ \(.*equivalent width data"))
    measured.wait_for(timeout=30_000)


TEXT_PAST_RIGHT_EDGE = """() => {
  const past = [], width = window.innerWidth;
  function walk(root) {
    for (const el of root.querySelectorAll('p, h1, h2, h3, label, span, li')) {
      const box = el.getBoundingClientRect();
      if (box.width > 0 && box.right > width + 1 && el.textContent.trim())
        past.push([el.tagName, Math.round(box.right), el.textContent.trim().slice(0, 40)]);
    }
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot);
  }
  walk(document);
  return past;
}"""


def test_no_text_runs_off_the_right_edge_at_1600_px(page):
    """The teaching view's text once ran past the window's right edge at 1,600 px."""
    page.set_viewport_size({"width": 1600, "height": 1100})
    page.get_by_text("What you see.").wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    assert page.evaluate(TEXT_PAST_RIGHT_EDGE) == []


def test_upload_of_a_plain_csv_with_an_instrument_preset_shows_its_fit(page, data, tmp_path):
    """A spectroscopist's own CSV (wavelength, flux, error; no header to say R): the upload
    panel's instrument preset supplies R, and the page shows the fit."""
    from stargon.surveys import read_file

    star = read_file(data / LAMOST_DR8)[0]
    path = tmp_path / "my_star.csv"
    sigma = np.where(star.valid, star.uncertainty, np.nan)
    rows = "\n".join(f"{w},{f},{e}" for w, f, e in zip(star.wave, star.flux, sigma, strict=True))
    path.write_text("Wavelength,Flux,Error\n" + rows + "\n")
    page.locator("select").filter(has_text="R below").select_option("lamost")
    page.wait_for_timeout(500)
    page.locator("input[type=file]").set_input_files(str(path))
    page.get_by_text("χ²/dof").wait_for(timeout=90_000)
    text = page.get_by_text("χ²/dof").inner_text()
    assert "uploaded my_star.csv" in text and "km/s" in text


SET_SLIDER = "([index, value]) => {" + MOVE_SLIDER_JS + "return sliders.map((s) => s.value); }"
DRAWN = """() => [Array.from(window.stargonSource.data.wavelength),
                Array.from(window.stargonSource.data.flux)]"""
ZOOM = """([start, end]) => {
  const range = window.stargonSource.tags[0].plot.x_range;
  range.start = start;
  range.end = end;
}"""


def _drawn_pixels(page, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (indices into the full wavelength grid `x`) the page draws, and their flux;
    each drawn wavelength must be one of the grid's."""
    wavelength, flux = (np.array(v, dtype=float) for v in page.evaluate(DRAWN))
    keep = np.isfinite(wavelength)
    pixels = np.searchsorted(x, wavelength[keep])
    np.testing.assert_array_equal(x[pixels], wavelength[keep])
    return pixels, flux[keep]


def test_a_slider_move_is_decoded_in_the_browser_as_torch_decodes_it(page, data):
    """The page's own decoder (explorer.client): after a slider move, without the server, the
    curve equals the torch model at those whitened latents over its own pseudo-continuum
    (`Explorer.spectrum`: the page redoes the envelope), to 1e-5, at three settings. The page
    draws it cut to the plot's
    pixel columns: fewer points, the same extremes; zoomed in so that columns are wider than
    pixels, every pixel in the window."""
    from stargon.explorer.state import Explorer

    explorer = Explorer(None, data)
    start = explorer.new_view()
    x, _ = explorer.spectrum(start)
    page.wait_for_function("() => window.Bokeh && [...Bokeh.documents[0].all_models].some("
                           "(m) => m.tags && m.tags[0] && m.tags[0].net)")  # fmt: skip
    for index, value in ((0, 1.5), (3, -0.8), (15, 0.4)):
        w = page.evaluate(SET_SLIDER, [index, value])
        page.wait_for_function("() => window.stargonTimes.length > 0")  # callbacks are async
        view = explorer.new_view()
        view.z = np.array(w)
        assert view.z[index] == pytest.approx(value, abs=1e-6)
        expected = explorer.spectrum(view)[1]
        pixels, flux = _drawn_pixels(page, x)
        np.testing.assert_allclose(flux, expected[pixels], atol=1e-5)
        columns = page.evaluate("() => window.stargonSource.tags[0].plot.inner_width")
        assert len(pixels) < len(x) and len(pixels) <= 4 * columns + 2
        assert flux.max() == pytest.approx(expected.max(), abs=1e-5)
        assert flux.min() == pytest.approx(expected.min(), abs=1e-5)
    window = (x[len(x) // 3], x[len(x) // 3 + 200])
    page.evaluate(ZOOM, list(map(float, window)))
    page.wait_for_timeout(500)
    pixels, flux = _drawn_pixels(page, x)
    inside = (x >= window[0]) & (x <= window[1])
    np.testing.assert_array_equal(pixels[(x[pixels] >= window[0]) & (x[pixels] <= window[1])],
                                  np.flatnonzero(inside))  # fmt: skip
    np.testing.assert_allclose(flux, expected[pixels], atol=1e-5)


def test_another_users_slider_moves_send_this_page_nothing(page, browser, server):
    """Sessions are independent: while one page's sliders move and are let go (the server
    handles each), another open page receives no message — no shared busy spinner that
    animates every page on any user's event."""
    other = browser.new_page(viewport={"width": 1500, "height": 1100})
    received: list[str] = []
    other.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(frame)))
    other.goto(server)
    other.wait_for_function(f"({FLUX_SUMS})().length > 0", timeout=90_000)
    other.wait_for_timeout(3000)  # its own first render settles
    received.clear()
    move = "([index, value]) => {" + MOVE_SLIDER_JS + "sliders[index].value_throttled = value; }"
    for index, value in ((0, 1.0), (2, -0.5), (5, 0.7)):
        page.evaluate(move, [index, value])
        page.wait_for_timeout(1500)  # the release's shading and line response are sent
    other.wait_for_timeout(500)
    other.close()
    assert received == []


# The sources that follow the latents, as the page holds them: the shading (Rectangles), its
# line names (Labels without the line names' tags), the map's marker (one point), and the line
# response's x range and the curves it shows.
FOLLOWING = """() => {
  const found = {spans: null, labels: null, marker: null, curves: [], window: null};
  const list = (values) => Array.from(values, (v) => (typeof v === "number" ? +v.toFixed(6) : v));
  for (const doc of Bokeh.documents)
    for (const m of doc.all_models) {
      if (m.type !== "ColumnDataSource" || (m.tags && m.tags.length)) continue;
      const keys = Object.keys(m.data).sort().join();
      if (keys === "bottom,left,right,top") found.spans = [list(m.data.left), list(m.data.right)];
      else if (keys === "line,wavelength,y") found.labels = list(m.data.line);
      else if (keys === "latent PC 1,latent PC 2")
        found.marker = [+m.data["latent PC 1"][0].toFixed(6), +m.data["latent PC 2"][0].toFixed(6)];
    }
  for (const doc of Bokeh.documents)
    for (const m of doc.all_models)
      if (m.renderers && m.title && /How the spectrum changes/.test(m.title.text)) {
        found.window = [+m.x_range.start.toFixed(4), +m.x_range.end.toFixed(4)];
        for (const r of m.renderers)  // a latent's own curves; another's stay, hidden
          if (r.visible && r.data_source && r.data_source.data.flux)
            found.curves.push(list(r.data_source.data.flux).reduce((a, b) => a + b, 0).toFixed(4));
      }
  found.curves.sort();
  return found;
}"""

SET_LATENT_SHOWN = """(value) => {
  for (const doc of Bokeh.documents)
    for (const m of doc.all_models)
      if (m.title === "sensitivity of" && "options" in m) { m.value = value; return true; }
  return false;
}"""


RELEASE = "([index, value]) => {" + MOVE_SLIDER_JS + "sliders[index].value_throttled = value; }"


def test_a_release_writes_what_a_full_render_of_the_same_view_draws(page):
    """After a slider is let go, the shading, its labels, the marker and the line response
    are written into the page's sources (`explorer.live`), not rendered by HoloViews. What
    the page then shows must be what rendering the same view shows: shading another latent
    and back renders them all, for the same latents."""
    page.wait_for_timeout(3000)  # the first render settles
    before = page.evaluate(FOLLOWING)
    assert before["spans"] and before["marker"] and before["window"] and len(before["curves"]) == 5
    page.evaluate(RELEASE, [0, 1.5])
    page.wait_for_function(f"JSON.stringify(({FOLLOWING})()) !== {json.dumps(json.dumps(before))}")
    page.wait_for_timeout(1500)
    written = page.evaluate(FOLLOWING)
    assert written["marker"] != before["marker"] and written["curves"] != before["curves"]
    for shown in ("1", "0"):  # another latent and back: rendered each time
        assert page.evaluate(SET_LATENT_SHOWN, shown)
        page.wait_for_timeout(3000)
    rendered = page.evaluate(FOLLOWING)
    assert rendered == written
