"""Which GON inner step makes latents that describe the star, not its noise?

Each variant trains on MILES alone with the same budget (steps, batch, pixels, seed, every other
setting as the default recipe), then every MILES spectrum is encoded with one step and the
latents are whitened (PCA of the training latents), and measured:

* final training χ²/n (mean of the last 50 steps' batch means);
* Spearman(S/N, |w|) and the partial correlation given Teff, log g, [Fe/H] (MILES's S/N itself
  follows Teff: hot, line-poor stars look cleaner);
* the same 60 spectra encoded with ivar × 100: median latent shift over median |w|;
* 5-fold kNN probes of Teff, log g, [Fe/H] on the 3,500–8,000 K stars, against PCA-16 of the
  flux measured in this same run.

    python benchmarks/gon_step.py --steps 400     # ≈ 25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import DATA, table
from sklearn.model_selection import KFold, cross_val_predict

from stargon.evaluate.holdout import SurveyPCA
from stargon.evaluate.metrics import partial_spearman, probe
from stargon.evaluate.release import encode_all
from stargon.model.checkpoint import load_checkpoint
from stargon.model.decoder import ModelConfig
from stargon.model.whitening import Whitening
from stargon.train.dataset import load_training_set
from stargon.train.loop import TrainConfig, train

VARIANTS = ("gradient", "normalised_gradient", "gauss_newton")
LABELS = ("teff", "logg", "fe_h")


def knn_rmse(features: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, float]:
    folds = KFold(5, shuffle=True, random_state=0)
    out = {}
    for name, y in labels.items():
        predicted = cross_val_predict(probe("knn"), features, y, cv=folds)
        out[name] = float(np.sqrt(np.mean((predicted - y) ** 2)))
    return out


def measure(model, dataset, labelled, labels, snr, steps_log) -> dict:
    every = np.arange(len(dataset.spectra))
    zeros = np.zeros(len(every))
    raw = encode_all(model, dataset, zeros, every)
    whitening = Whitening.fit(raw[~dataset.held_out])
    w = whitening.whiten(raw)
    size = np.linalg.norm(w, axis=1)
    covariates = np.column_stack([labels[k] for k in LABELS])
    probes = knn_rmse(w[labelled], {k: labels[k] for k in LABELS})
    chosen = np.random.default_rng(0).choice(len(every), 60, replace=False)
    brighter = replace(dataset, spectra=[replace(s) for s in dataset.spectra])
    for i in chosen:
        brighter.spectra[i].ivar = dataset.spectra[i].ivar * 100.0
    shifted = whitening.whiten(encode_all(model, brighter, zeros, chosen))
    shift = np.median(np.linalg.norm(shifted - w[chosen], axis=1)) / np.median(size[chosen])
    return {
        "final_chi2": float(np.mean([r["mean_chi2"] for r in steps_log[-5:]])),
        "spearman": partial_spearman(snr, size),
        "partial": partial_spearman(snr[labelled], size[labelled], covariates),
        "ivar_x100_shift": float(shift),
        **{f"knn_{k}": v for k, v in probes.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_training_set(DATA, ["miles"], progress=False)
    spectra = dataset.spectra
    snr = np.array([s.median_snr() for s in spectra])
    teff = np.array([s.labels.get("teff", np.nan) for s in spectra])
    labelled = np.flatnonzero((teff >= 3500) & (teff <= 8000) & np.array(
        [all(k in s.labels for k in LABELS) for s in spectra]))  # fmt: skip
    labels = {k: np.array([spectra[i].labels[k] for i in labelled]) for k in LABELS}
    rows = []
    pca = SurveyPCA([spectra[i] for i in np.flatnonzero(~dataset.held_out)], 16)
    coeffs = np.array([p["coeffs"] for p in pca.project(spectra)])
    rows.append({"step": "PCA-16 of the flux", **{
        f"knn_{k}": v for k, v in knn_rmse(coeffs[labelled], labels).items()}})  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        for variant in VARIANTS:
            config = TrainConfig(
                data=str(DATA), out=str(Path(folder) / variant), surveys=["miles"],
                steps=args.steps, warmup_steps=0, rv_every=10**9, checkpoint_every=args.steps,
                device="cpu", model=ModelConfig(inner_step=variant),
            )  # fmt: skip
            run = train(config, dataset=dataset)
            latest = json.loads((run / "latest.json").read_text())
            model, _, _ = load_checkpoint(run / latest["checkpoint"])
            log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            rows.append({"step": variant, **measure(model, dataset, labelled, labels, snr, log)})
            print(table(rows[-1:], list(rows[-1])), flush=True)
    columns = ["step", "final_chi2", "spearman", "partial", "ivar_x100_shift",
               "knn_teff", "knn_logg", "knn_fe_h"]  # fmt: skip
    print(f"\nMILES only, {args.steps} steps × 64 spectra × 1,000 px, one-step latents whitened;")
    print(f"{labelled.size} stars of 3,500–8,000 K for the probes (5-fold kNN, k = 7)\n")
    print(table(rows, columns))


if __name__ == "__main__":
    main()
