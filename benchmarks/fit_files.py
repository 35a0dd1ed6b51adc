"""`stargon fit` end to end — reading the files, fitting, writing the CSV — on a survey folder,
against one spectrum at a time (`--batch-size 1`) in the same run. LAMOST DR8's 220 files are
linked four times over (880 files) so that the run is long against the start-up; MILES is its
984 files. Each setting is a fresh process: its wall time (start-up included: imports, the
model, its pyramid) and the spectra/s its progress bar ends on (from the first file read).

    python -m benchmarks.fit_files --runs 3 --batch-sizes 1,64
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, ratio_to_first, table

FOLDERS = {
    "LAMOST DR8 × 4": ("lamost_dr8/20220313_CCF_test_grouped_fits", 4),
    "MILES": ("miles", 1),
}


def linked(folder: Path, copies: int, into: Path) -> Path:
    """`folder`'s files linked `copies` times over into a folder of their own."""
    if copies == 1:
        return folder
    into.mkdir()
    for copy in range(copies):
        for path in folder.iterdir():
            (into / f"copy{copy}_{path.name}").symlink_to(path)
    return into


def run_fit(folder: Path, batch_size: int, out: Path) -> dict:
    command = [sys.executable, "-m", "stargon", "fit", str(folder), "--out", str(out),
               "--batch-size", str(batch_size), "--device", "cpu"]  # fmt: skip
    start = time.perf_counter()
    run = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    rate = float(re.findall(r"per_s=([0-9.]+)", run.stderr)[-1])
    return {"wall s": wall, "spectra": len(out.read_text().splitlines()) - 1, "bar": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,64")
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, (folder, copies) in FOLDERS.items():
            files = linked(DATA / folder, copies, Path(work) / f"{copies}x_{Path(folder).name}")
            results = {size: [] for size in sizes}
            for run in range(args.runs):
                for size in sizes:
                    out = Path(work) / f"fits_{run}_{size}.csv"
                    results[size].append(run_fit(files, size, out))
            for size in sizes:
                walls = [r["wall s"] for r in results[size]]
                rates = [r["bar"] for r in results[size]]
                rows.append({
                    "files": name, "spectra": results[size][0]["spectra"], "batch size": size,
                    "wall s (median)": float(np.median(walls)),
                    "spectra/s (median)": float(np.median(rates)),
                    "spectra/s of each run": ", ".join(f"{r:.1f}" for r in rates),
                })  # fmt: skip
            ratio_to_first(rows[-len(sizes) :], "spectra/s (median)", "× batch size 1")
    print(f"stargon fit, CPU, {args.runs} runs each (wall time includes start-up)\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
