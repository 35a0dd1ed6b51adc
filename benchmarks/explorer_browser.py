"""Explorer latency in the browser: a slider move → the redrawn model curve, measured in Chromium
with the performance API (the page decodes itself, `explorer/client.py`).

A move sets a latent slider's value as a drag does; per move: the JavaScript callback's time
(MLP, basis sum over the pixels, new curve data) and, in the next animation frame, Bokeh's
repaint (from the frame's start to after Bokeh's own frame callback). Their sum is the busy
time a move costs the page: within 16.7 ms it fits in one frame at 60 Hz. On the GALAH preset
(16,384 pixels), with one page open and with five (moves in one of them). Baseline in the same
run: the server-side path of the previous release (`python -m benchmarks.explorer`).

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

MOVE = (
    "async ([index, value]) => {"
    + MOVE_SLIDER_JS
    + """
  while (window.stargonTimes.length === 0) await new Promise((r) => setTimeout(r, 0));
  const paint = await new Promise((resolve) =>
    requestAnimationFrame((frame) => resolve(performance.now() - frame)));
  return [window.stargonTimes[0], paint, window.stargonSource.data.flux.length];
}"""
)


LOADED = """() => window.Bokeh && Bokeh.documents.length && [...Bokeh.documents[0].all_models]
  .some((m) => m.tags && m.tags[0] && m.tags[0].stargon_decoder)"""


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


def measure(browser, url: str, n_pages: int, n_moves: int) -> dict:
    pages = [browser.new_page(viewport={"width": 1500, "height": 1100}) for _ in range(n_pages)]
    for page in pages:
        page.goto(url)
        page.wait_for_function(LOADED, timeout=120_000)
    pages[0].wait_for_timeout(3000)
    rng = np.random.default_rng(0)
    work, paint, pixels = [], [], 0
    for _ in range(n_moves):
        callback, repaint, pixels = pages[0].evaluate(
            MOVE, [int(rng.integers(16)), float(rng.uniform(-2, 2))]
        )
        work.append(callback)
        paint.append(repaint)
    for page in pages:
        page.close()
    busy = np.array(work) + np.array(paint)
    return {
        "pages open": n_pages, "pixels": pixels,
        "callback p50 ms": float(np.median(work)), "repaint p50 ms": float(np.median(paint)),
        "move p50 ms": float(np.median(busy)), "move p95 ms": float(np.percentile(busy, 95)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--moves", type=int, default=100)
    args = parser.parse_args()
    process, url = serve()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox"]
            )
            rows = [measure(browser, url, n, args.moves) for n in (1, 5)]
            browser.close()
    finally:
        process.terminate()
    print("Slider move in the browser, GALAH preset (python -m benchmarks.explorer_browser)\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
