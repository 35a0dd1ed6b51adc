"""Scaling: training from shards at 10k → 200k spectra, and fitting against batch size.

The spectra are synthetic, at APOGEE length: Payne-emulator spectra (7,214 pixels, R 22,500,
labels drawn uniformly, noise at S/N 50–200) and, one in ten, a real MILES spectrum redrawn
with new noise; all marked synthetic, written once into shards (`ShardWriter`) and reused. A
size n trains on n of them, the surveys mixed as in the whole set (a manifest of its own). Per
n, a fresh `stargon train --shards` process: the resolution-coverage pass (once per run),
steps/s after the first log record, and the peak resident memory of the trainer and its
reader process together (sampled from /proc every 0.2 s). Baseline in the same run: the
in-memory trainer (`--data`-style: every spectrum held) at the smallest n. Fitting: spectra/s
of `Fitter.fit_batch` on 64 of the emulator spectra against batch size (the process keeps freed
memory, as `stargon fit` does); `--fit-only` writes just those 64 and fits them.

    python -m benchmarks.scale --sizes 10000,50000,200000 --steps 100 --work /tmp/stargon-scale
    python -m benchmarks.scale --fit-only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmarks.common import DATA, load_fitter, ratio_to_first, table
from stargon.core.spectrum import Spectrum
from stargon.model.devices import keep_freed_memory
from stargon.surveys.registry import iter_spectra
from stargon.train.dataset import EMULATOR
from stargon.train.emulator import PayneEmulator
from stargon.train.shards import MANIFEST, ShardWriter
from stargon.train.stream import training_spectra

SHARD_SIZE = 2000
TRAIN = ["--batch-size", "64", "--n-pixels", "1000", "--held-out-every", "0", "--no-package",
         "--device", "cpu", "--log-every", "10", "--warmup-steps", "0"]  # fmt: skip


def noisy(spectrum: Spectrum, rng: np.random.Generator, source: str) -> Spectrum:
    """The spectrum with new noise at an S/N between 50 and 200, a star of its own."""
    sigma = np.abs(spectrum.flux) / rng.uniform(50, 200) + 1e-3
    flux = spectrum.flux + rng.normal(0, sigma)
    return replace(spectrum, flux=flux, ivar=1 / sigma**2, source=source, star_id=source,
                   synthetic=True)  # fmt: skip


def make_shards(folder: Path, n: int, seed: int = 0) -> Path:
    """n synthetic spectra in shards (reused when already there)."""
    if (folder / MANIFEST).exists() and json.loads((folder / MANIFEST).read_text())["spectra"] >= n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    emulator = PayneEmulator(DATA / EMULATOR)
    real = [s for s in iter_spectra(DATA / "miles") if s.frame == "rest"]
    writer = ShardWriter(folder, SHARD_SIZE)
    rng = np.random.default_rng(seed)
    for start in range(0, n, 1000):
        count = min(1000, n - start)
        labels = emulator.sample_labels(count, torch.Generator().manual_seed(seed + start))
        for i, spectrum in enumerate(emulator.spectra(labels, seed=seed + start)):
            k = start + i
            if k % 10 == 9:
                writer.add(noisy(real[rng.integers(len(real))], rng, f"miles-{k}"), "miles_redrawn")
            else:
                writer.add(noisy(spectrum, rng, f"payne-{k}"), "payne_synthetic")
        print(f"  {start + count} spectra", end="\r", flush=True)
    writer.close()
    return folder


def subset(folder: Path, n: int, out: Path) -> Path:
    """A manifest over n of the spectra with the surveys mixed as in the whole set: each
    survey's first shards, the last one in part (its first row groups; links to the files)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    per_group, total = manifest["rows_per_group"], manifest["spectra"]
    out.mkdir(parents=True, exist_ok=True)
    shards, counts = [], {}
    for survey in sorted({shard["survey"] for shard in manifest["shards"]}):
        mine = [shard for shard in manifest["shards"] if shard["survey"] == survey]
        wanted = round(n * sum(shard["spectra"] for shard in mine) / total)
        entry = counts.setdefault(survey, {"train": 0, "held_out": 0, "rest": 0})
        for shard in mine:
            if wanted <= 0:
                break
            groups = min(shard["row_groups"], -(-wanted // per_group))
            taken = min(shard["spectra"], groups * per_group)
            share = taken / shard["spectra"]
            shards.append(shard | {"spectra": taken, "row_groups": groups,
                                   "held_out": round(shard["held_out"] * share),
                                   "rest": round(shard["rest"] * share)})  # fmt: skip
            entry["held_out"] += shards[-1]["held_out"]
            entry["train"] += taken - shards[-1]["held_out"]
            entry["rest"] += shards[-1]["rest"]
            wanted -= taken
            link = out / shard["file"]
            if not link.exists():
                link.symlink_to(folder / shard["file"])
    spectra = sum(shard["spectra"] for shard in shards)
    mine = manifest | {"shards": shards, "spectra": spectra, "per_survey": counts}
    (out / MANIFEST).write_text(json.dumps(mine))
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, grew = {pid}, True
    while grew:
        new = {p for p, parent in parents.items() if parent in family} - family
        family |= new
        grew = bool(new)
    total = 0
    for member in family:
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * os.sysconf(
                "SC_PAGE_SIZE"
            )
        except OSError:
            continue
    return total


def run_measured(command: list[str]) -> tuple[float, int]:
    """(the epoch time it started, peak resident bytes of the process tree)."""
    start = time.time()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    process.wait()
    sampler.join()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode})")
    return start, peak


IN_MEMORY = """
import sys
import numpy as np
from stargon.train.dataset import TrainingSet
from stargon.train.loop import TrainConfig, train
from stargon.train.stream import training_spectra
shards, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
spectra = list(training_spectra(shards))
dataset = TrainingSet(spectra, ["synthetic"] * len(spectra), np.zeros(len(spectra), bool))
train(TrainConfig(data=shards, out=out, steps=steps, batch_size=64, n_pixels=1000,
                  held_out_every=0, device="cpu", log_every=10, warmup_steps=0), dataset=dataset)
"""


def train_row(kind: str, n: int, folder: Path, work: Path, steps: int) -> dict:
    """Start-up: from launch to the first step (the first 10 steps at the steady rate taken
    off the first record's time)."""
    out = work / f"run-{kind}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    if kind == "streamed":
        command = [sys.executable, "-m", "stargon", "train", "--shards", str(folder),
                   "--out", str(out), "--steps", str(steps), *TRAIN]  # fmt: skip
    else:
        command = [sys.executable, "-c", IN_MEMORY, str(folder), str(out), str(steps)]
    launched, peak = run_measured(command)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rate = float(np.median([r["spectra_per_s"] for r in records[1:]]))  # steady
    start_up = records[0]["time"] - launched - 10 * 64 / rate
    return {"trainer": kind, "spectra": n, "start-up s": start_up, "spectra/s": rate,
            "peak RSS GB": peak / 1e9}  # fmt: skip


def fit_rows(folder: Path, batch_sizes: list[int]) -> list[dict]:
    spectra = [s for s, _ in zip(training_spectra(folder), range(64), strict=False)]
    fitter = load_fitter(None)
    fitter.fit_batch(spectra[:2])  # warm-up
    rows = []
    for size in batch_sizes:
        start = time.perf_counter()
        for i in range(0, len(spectra), size):
            fitter.fit_batch(spectra[i : i + size])
        elapsed = time.perf_counter() - start
        rows.append({"batch size": size, "spectra/s": len(spectra) / elapsed})
    ratio_to_first(rows, "spectra/s", "× B=1")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stargon-scale"))
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("scale.png"))
    parser.add_argument("--fit-only", action="store_true", help="only the fitting table")
    args = parser.parse_args()
    keep_freed_memory()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.fit_only:
        print_fits(fit_rows(make_shards(args.work / "fit-shards", 64), batch_sizes))
        return
    sizes = [int(n) for n in args.sizes.split(",")]
    print(f"writing {max(sizes)} synthetic spectra into shards …")
    shards = make_shards(args.work / "shards", max(sizes))
    folders = {n: subset(shards, n, args.work / f"n{n}") for n in sizes}
    rows = [train_row("in memory", sizes[0], folders[sizes[0]], args.work, args.steps)]
    rows += [train_row("streamed", n, folders[n], args.work, args.steps) for n in sizes]
    base = rows[1]
    for row in rows:
        row["spectra/s ÷ streamed at smallest n"] = row["spectra/s"] / base["spectra/s"]
        row["peak ÷ streamed at smallest n"] = row["peak RSS GB"] / base["peak RSS GB"]
    print("\nTraining (python -m benchmarks.scale), batch 64 × 1000 pixels, CPU\n")
    print(table(rows, list(rows[0])))
    fits = fit_rows(shards, batch_sizes)
    print_fits(fits)
    plot(rows, fits, args.plot)


def print_fits(fits: list[dict]) -> None:
    print("\nFitting 64 emulator spectra (7,214 pixels, rest frame), CPU\n")
    print(table(fits, list(fits[0])))


def plot(rows: list[dict], fits: list[dict], path: Path) -> None:
    streamed = [r for r in rows if r["trainer"] == "streamed"]
    figure, (memory, fitting) = plt.subplots(1, 2, figsize=(10, 3.6))
    n = [r["spectra"] for r in streamed]
    memory.plot(n, [r["peak RSS GB"] for r in streamed], "o-", label="streamed: peak RSS (GB)")
    rates = [r["spectra/s"] / 100 for r in streamed]
    memory.plot(n, rates, "s--", label="streamed: spectra/s ÷ 100")
    memory.plot(rows[0]["spectra"], rows[0]["peak RSS GB"], "x", ms=10,
                label="in memory: peak RSS (GB)")  # fmt: skip
    memory.set_xscale("log")
    memory.set_xlabel("training spectra")
    memory.legend(fontsize=8)
    fitting.plot([f["batch size"] for f in fits], [f["spectra/s"] for f in fits], "o-")
    fitting.set_xscale("log", base=2)
    fitting.set_xlabel("fit batch size")
    fitting.set_ylabel("spectra/s")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
