"""The model against its training budget: `stargon evaluate` reports of models trained with the
same recipe for different numbers of steps, as one table (held-out χ²/dof per survey and
PCA's, emulator MAE, MILES probes, C2ST on modelled pixels) and one plot of each survey's
held-out χ²/dof over PCA's against the pixel reads the model was trained on.

    python -m benchmarks.learning_curve reports/default runs/budget-2x/report \\
        --plot benchmarks/learning_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.common import table


def budget(metrics: dict) -> tuple[int, float]:
    """(training steps, pixel reads in millions) of the evaluated model, from its card."""
    card = json.loads((Path(metrics["checkpoint"]) / "model.json").read_text())["card"]
    config = card["train_config"]
    steps = int(card["trained_steps"])
    return steps, steps * config["batch_size"] * config["n_pixels"] / 1e6


def row(metrics: dict) -> dict:
    steps, reads = budget(metrics)
    out = {"steps": steps, "pixel reads (M)": reads}
    for survey, values in sorted(metrics["reconstruction"].items()):
        out[f"χ²/dof {survey}"] = values["model_chi2_dof"]
        out[f"PCA {survey}"] = values["pca_chi2_dof"]
    out["emulator MAE"] = metrics["emulator_fidelity"]["model_mae"]
    out["emulator MAE PCA"] = metrics["emulator_fidelity"]["pca_mae"]
    for probe in metrics["probes"]:
        if probe["subset"] == "3500–8000 K" and probe["label"] == "teff":
            out[f"MILES Teff {probe['probe']} (PCA)"] = (
                f"{probe['latents_rmse']:.0f} ({probe['pca_rmse']:.0f})"
            )
    for realism in metrics["realism"]:
        out[f"C2ST {realism['survey']}"] = realism["c2st_accuracy"]
    return out


def plot(rows: list[dict], path: Path) -> None:
    surveys = sorted({k.removeprefix("χ²/dof ") for r in rows for k in r if k.startswith("χ²")})
    fig, ax = plt.subplots(figsize=(6, 4))
    reads = [r["pixel reads (M)"] for r in rows]
    for survey in surveys:
        ratio = [r[f"χ²/dof {survey}"] / r[f"PCA {survey}"] if r.get(f"PCA {survey}") else None
                 for r in rows]  # fmt: skip
        if all(value is not None for value in ratio):
            ax.plot(reads, ratio, "o-", label=survey)
    ax.plot(reads, [r["emulator MAE"] / r["emulator MAE PCA"] for r in rows], "k--",
            label="emulator MAE")  # fmt: skip
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("pixel reads in training (millions)")
    ax.set_ylabel("held-out χ²/dof over PCA's")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report folders (metrics.json)")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in args.reports]
    rows = sorted((row(m) for m in metrics), key=lambda r: r["steps"])
    print(f"(python -m benchmarks.learning_curve {' '.join(map(str, args.reports))})\n")
    print(table(rows, list(rows[0])))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
