"""Explorer latency: a slider move → new figure data, server side, as the app does it.

One move sets a latent slider; the app's watcher updates its state and fires the streams that
redraw the whole page's live parts (decode on the cached pixel basis, the HoloViews element
and the Bokeh data source of the model curve, the title). What follows a slider only when it is
let go (value_throttled) — sensitivity shading and line labels (the Jacobian), the line
response, the latent-map marker — is timed apart as "on release". Timed for one session and for 5
sessions moving sliders at the same instant (served one after another on the server's event
loop, as Panel does; running HoloViews plot updates on several threads at once corrupts its
plot state, so a threaded server is not an option). Baseline in the same
process: the bare decode of the same pixels (what any model would have to do).

    python -m benchmarks.explorer --checkpoint assets/default
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import panel as pn
import torch

from benchmarks.common import table
from stargon.explorer.app import ExplorerApp
from stargon.explorer.state import Explorer

INSTRUMENTS = ("miles", "apogee", "galah")


def session(explorer: Explorer, instrument: str):
    app = ExplorerApp(explorer)
    app.instrument.value = instrument
    return app, pn.panel(app).get_root()  # the Bokeh models a browser session is sent


def moves(app: ExplorerApp, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        slider = app.sliders[rng.integers(len(app.sliders))]
        value = rng.uniform(slider.start, slider.end)
        start = time.perf_counter()
        slider.value = value
        out.append(time.perf_counter() - start)
    return out


def bursts(sessions: list[ExplorerApp], n: int, seed: int = 2) -> list[float]:
    """Every session moves a slider at the same instant, n times. A Panel server handles its
    sessions' events on one thread, so each move waits for those queued before it: the
    latency of a move is the time from the burst to its own redraw."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        for app in sessions:
            slider = app.sliders[rng.integers(len(app.sliders))]
            slider.value = rng.uniform(slider.start, slider.end)
            out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--moves", type=int, default=200)
    args = parser.parse_args()
    explorer = Explorer(args.checkpoint)
    rows = []
    for instrument in INSTRUMENTS:
        app, _ = session(explorer, instrument)
        moves(app, 10, 0)  # warm-up: basis cached, plot built
        single = np.array(moves(app, args.moves, 1)) * 1e3
        release = []
        for _ in range(args.moves // 5):
            app.view.z = app.view.z + 0.01
            start = time.perf_counter()
            app._refresh_slow()
            release.append((time.perf_counter() - start) * 1e3)
        basis = explorer._basis(app.view)
        z = torch.as_tensor(app.view.z[None], dtype=basis.dtype)
        decode = []
        for _ in range(args.moves):
            start = time.perf_counter()
            with torch.no_grad():
                explorer.model.observe(z, basis)
            decode.append((time.perf_counter() - start) * 1e3)
        sessions = [session(explorer, instrument)[0] for _ in range(5)]
        for other in sessions:
            moves(other, 5, 0)
        concurrent = np.array(bursts(sessions, args.moves // 5)) * 1e3
        rows.append({
            "instrument": instrument, "pixels": app.explorer.pixels(app.view)[0].size,
            "p50_ms": np.percentile(single, 50), "p95_ms": np.percentile(single, 95),
            "p95_5_sessions_ms": np.percentile(concurrent, 95),
            "on_release_p50_ms": np.percentile(release, 50),
            "decode_only_ms": np.median(decode),
            "p50_vs_decode": np.percentile(single, 50) / np.median(decode),
        })  # fmt: skip
    print(f"device: CPU, {torch.get_num_threads()} threads; {args.moves} slider moves each\n")
    print(table(rows, ["instrument", "pixels", "p50_ms", "p95_ms", "p95_5_sessions_ms",
                       "on_release_p50_ms", "decode_only_ms", "p50_vs_decode"]))  # fmt: skip


if __name__ == "__main__":
    main()
