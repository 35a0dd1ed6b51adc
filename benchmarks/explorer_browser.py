"""Explorer latency in the browser: a slider move → the redrawn model curve, measured in Chromium
with the performance API (the page decodes itself, `explorer/client.py`).

A move sets a latent slider's value as a drag does. Per move: the JavaScript callback's time
(MLP, basis sum over the pixels, the curve cut to the plot's pixel columns), the time of Bokeh's
paint that follows (the plot view's own paint, timed from inside), their sum — the main thread's
busy time a move costs, within 16.7 ms it fits in one frame at 60 Hz — and the latency from
setting the value to the end of that paint (which includes waiting for the next frame). On the
GALAH preset (16,387 pixels with gaps), with one page open and with five (moves in one of them).
Baseline in the same run and page: the curve drawn as the previous release drew it, every pixel
on Bokeh's primary layer.

    python -m benchmarks.explorer_browser          # starts `stargon serve` and Chromium
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
from playwright.sync_api import sync_playwright

from benchmarks.common import table
from stargon.explorer.client import MOVE_SLIDER_JS

# Instruments the spectrum plot's view: each of Bokeh's paints is timed. For the baseline, the
# curve is drawn as the previous release did: every pixel (a plot "wider" than any column) on the
# primary layer (with the axes, labels and legend). The curve's fields are changed in place, so
# nothing is sent to the server.
SETUP = """(baseline) => {
  let curve = null;
  for (const doc of Bokeh.documents)
    for (const m of doc.all_models) if (m.tags && m.tags[0] && m.tags[0].net) curve = m;
  const fields = curve.tags[0], plot = fields.plot, view = Bokeh.index.find_one(plot);
  const paint = view._actual_paint.bind(view);
  window.stargonPaints = [];
  view._actual_paint = () => {
    const start = performance.now();
    paint();
    window.stargonPaints.push([start, performance.now()]);
  };
  if (baseline) {
    fields.renderer.level = "glyph";
    fields.plot = {x_range: plot.x_range, inner_width: 1e9};
  }
}"""

MOVE = (
    "async ([index, value]) => { window.stargonPaints = []; const set = performance.now();"
    + MOVE_SLIDER_JS
    + """
  while (window.stargonPaints.length === 0) await new Promise((r) => setTimeout(r, 1));
  const [start, end] = window.stargonPaints[0];
  return [window.stargonTimes[0], end - start, end - set, window.stargonSource.data.flux.length];
}"""
)


# A release after a move: the curve is already final (the page normalises it itself); the
# server sends what follows a release (shading, labels, title, line response, the map's
# marker), then the page's URL. The time from setting value_throttled to the last change the
# server sends but the URL's (none for 1.5 s after it), and whether the curve was redrawn.
RELEASE = (
    "async ([index, value]) => {"
    + MOVE_SLIDER_JS
    + """
  const wait = async (done) => {
    const until = performance.now() + 10000;
    while (!done() && performance.now() < until) await new Promise((r) => setTimeout(r, 1));
  };
  await wait(() => window.stargonTimes.length > 0);
  await new Promise((r) => setTimeout(r, 100));
  const doc = Bokeh.documents[0], drawn = window.stargonSource.stargonDrawn;
  let changed = null;
  const listener = (event) => {  // the page's URL follows the release, after what it shows
    if (!(event.model && event.model.type === "panel.models.location.Location"))
      changed = performance.now();
  };
  doc.on_change(listener);
  const set = performance.now();
  sliders[index].value_throttled = value;
  await wait(() => changed !== null && performance.now() - changed > 1500);
  doc.remove_on_change(listener);
  const redrawn = window.stargonSource.stargonDrawn !== drawn;
  return [changed === null ? NaN : changed - set, redrawn];
}"""
)

LOADED = """() => window.Bokeh && Bokeh.documents.length && [...Bokeh.documents[0].all_models]
  .some((m) => m.tags && m.tags[0] && m.tags[0].net)"""


def serve() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "stargon", "serve", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/?instrument=galah"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=5)
            return process, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("stargon serve did not answer")


def measure(
    browser, url: str, n_pages: int, n_moves: int, n_releases: int, baseline: bool
) -> tuple[dict, list[dict]]:
    pages = [browser.new_page(viewport={"width": 1500, "height": 1100}) for _ in range(n_pages)]
    for page in pages:
        page.goto(url)
        page.wait_for_function(LOADED, timeout=120_000)
    pages[0].wait_for_timeout(3000)
    pages[0].evaluate(SETUP, baseline)
    rng = np.random.default_rng(0)
    moves = []
    for _ in range(n_moves):
        index, value = int(rng.integers(16)), float(rng.uniform(-2, 2))
        moves.append(pages[0].evaluate(MOVE, [index, value]))
        pages[0].wait_for_timeout(20)  # a drag's next event
    releases = [] if baseline else [
        pages[0].evaluate(RELEASE, [int(rng.integers(16)), float(rng.uniform(-2, 2))])
        for _ in range(n_releases)
    ]  # fmt: skip
    for page in pages:
        page.close()
    callback, paint, latency, points = np.array(moves).T
    busy = callback + paint
    move_row = {
        "drawing": "every pixel, primary layer" if baseline else "cut to columns, overlay layer",
        "pages open": n_pages, "points drawn": int(points[-1]),
        "callback p50": float(np.median(callback)), "paint p50": float(np.median(paint)),
        "busy p50": float(np.median(busy)), "busy p95": float(np.percentile(busy, 95)),
        "input→painted p50": float(np.median(latency)),
        "input→painted p95": float(np.percentile(latency, 95)),
    }  # fmt: skip
    if not releases:
        return move_row, []
    arrived, redrawn = np.array(releases).T
    return move_row, [{
        "pages open": n_pages, "releases": len(releases),
        "curve redrawn on release": int(redrawn.sum()),
        "release→last server change p50": float(np.median(arrived)),
        "release→last server change p95": float(np.percentile(arrived, 95)),
    }]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--moves", type=int, default=100)
    parser.add_argument("--releases", type=int, default=20)
    args = parser.parse_args()
    process, url = serve()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox"]
            )
            results = [
                measure(browser, url, n, args.moves, args.releases, baseline)
                for baseline in (True, False)
                for n in (1, 5)
            ]
            browser.close()
    finally:
        process.terminate()
    print("Slider move in the browser, GALAH preset (python -m benchmarks.explorer_browser)\n")
    rows = [move for move, _ in results]
    print(table(rows, list(rows[0])))
    releases = [row for _, rows in results for row in rows]
    print("\nRelease → what the server sends after it (shading, labels, line response)\n")
    print(table(releases, list(releases[0])))


if __name__ == "__main__":
    main()
