"""What limits the model at a fixed training budget: the default recipe's settings with one
setting changed at a time (basis functions, latent size, MLP width, pixels per spectrum at the
same pixel reads, roughness weight, Gauss–Newton steps), each trained for the same pixel reads,
released, and measured by `stargon evaluate`. One table row per variant, as in
`benchmarks.learning_curve`, with the training speed (median spectra/s over the logged steps,
which a shared or paused machine does not skew as the wall time would).

    python -m benchmarks.capacity --out runs/capacity --steps 400 --batch-size 64

A variant already trained and evaluated under --out is read back, not run again, so the script
can be stopped and started.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, table
from benchmarks.learning_curve import row

# The default recipe (train/recipes/default.sh) without its budget, checkpoints and held-out logs.
RECIPE = ["--warmup-steps", "300", "--rv-every", "1000", "--synthetic", "1000",
          "--survey-balance", "0.5", "--lr-decay-from", "0.6", "--inner-step", "gauss_newton",
          "--prior-precision", "1", "--roughness", "100", "--coverage-count", "20",
          "--no-package", "--resume"]  # fmt: skip

# name → the options that differ from the recipe; "pixels×2" halves the batch (same reads).
VARIANTS = {
    "default": [],
    "seed 1": ["--seed", "1"],  # the same settings again: how far two runs differ by chance
    "n_basis 64": ["--n-basis", "64"],
    "n_basis 128": ["--n-basis", "128"],
    "latent 24": ["--latent-dim", "24"],
    "latent 32": ["--latent-dim", "32"],
    "hidden 256": ["--hidden", "256"],
    "pixels×2": ["--n-pixels", "×2"],
    "roughness 30": ["--roughness", "30"],
    "GN steps 2": ["--gon-steps", "2"],
}


def options(variant: list[str], steps: int, batch: int, pixels: int) -> list[str]:
    """The training options of a variant at `steps` × `batch` × `pixels` pixel reads."""
    chosen = {"--steps": str(steps), "--batch-size": str(batch), "--n-pixels": str(pixels)}
    chosen["--warmup-steps"] = str(max(1, steps * 300 // 5000))  # the recipe's share of steps
    for flag, value in zip(variant[::2], variant[1::2], strict=True):
        if value == "×2":
            chosen["--n-pixels"], chosen["--batch-size"] = str(2 * pixels), str(batch // 2)
        else:
            chosen[flag] = value
    recipe = dict(zip(RECIPE[:-2:2], RECIPE[1:-2:2], strict=True))
    recipe.update(chosen)
    return [item for pair in recipe.items() for item in pair] + RECIPE[-2:]


def stargon(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "stargon", *args], check=True)


def run_variant(name: str, folder: Path, train: list[str], data: Path) -> dict:
    """Train, release and evaluate one variant (each stage skipped when already done)."""
    report = folder / "report" / "metrics.json"
    if not report.exists():
        if not (folder / "model" / "model.json").exists():
            stargon("train", "--data", str(data), "--out", str(folder / "run"),
                    "--checkpoint-every", "100", *train)  # fmt: skip
            stargon("release", str(folder / "run"), "--out", str(folder / "model"), "--no-evaluate")
        stargon("evaluate", "--checkpoint", str(folder / "model"), "--data", str(data),
                "--out", str(folder / "report"), "--max-per-survey", "30",
                "--injection-trials", "10")  # fmt: skip
    metrics = json.loads(report.read_text())
    log = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    speed = float(np.median([record["spectra_per_s"] for record in log]))
    return {"variant": name} | row(metrics) | {"training spectra/s": speed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/capacity"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-pixels", type=int, default=2000)
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    rows = []
    for name in args.only:
        train = options(VARIANTS[name], args.steps, args.batch_size, args.n_pixels)
        folder = args.out / name.replace(" ", "-").replace("×", "x")
        rows.append(run_variant(name, folder, train, args.data))
    print(f"(python -m benchmarks.capacity --steps {args.steps} --batch-size {args.batch_size}"
          f" --n-pixels {args.n_pixels})\n")  # fmt: skip
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
