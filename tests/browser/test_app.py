"""The explorer in a real Chromium (Debian's `chromium`, driven by Playwright) against a real
`stargon serve` on 127.0.0.1. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
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


def test_upload_of_a_real_lamost_file_shows_its_fit(page, data):
    page.locator("input[type=file]").set_input_files(str(data / LAMOST))
    page.get_by_text("χ²/dof").wait_for(timeout=90_000)
    text = page.get_by_text("χ²/dof").inner_text()
    assert "uploaded spec-55862-B6212_sp06-003.fits" in text and "km/s" in text


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
