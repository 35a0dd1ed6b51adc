"""Controlled fidelity: spectra made by The Payne's APOGEE emulator, never seen in training.

Fresh labels are drawn uniformly inside the emulator's range (a seed other than the training
set's), spectra made without noise, and fitted as rest-frame APOGEE spectra. Reported: mean
absolute error in normalised flux (targets: TransformerPayne 0.15 %, The Payne 0.3–1.2 %),
against a PCA with as many components as latent dimensions fitted in the same run on the
training set's emulator spectra; and linear probes from latents (and from PCA coefficients)
back to the labels that made the spectra.

    python -m benchmarks.emulator_fidelity --checkpoint RUN/model --n 200
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import DATA, load_fitter, table
from stargon.evaluate.holdout import SurveyPCA
from stargon.evaluate.metrics import probe_rmse
from stargon.model.batch import make_batch
from stargon.train.dataset import EMULATOR, synthetic_spectra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="model folder (default: embedded)")
    parser.add_argument("--n", type=int, default=200, help="unseen spectra to fit")
    parser.add_argument("--n-train", type=int, default=1000, help="emulator spectra for PCA")
    args = parser.parse_args()
    fitter = load_fitter(args.checkpoint)
    model = fitter.model
    train = synthetic_spectra(DATA / EMULATOR, args.n_train, seed=0)
    test = synthetic_spectra(DATA / EMULATOR, args.n, seed=12345)
    fits = fitter.fit(test)
    pairs = zip(test, fits, strict=True)
    model_mae = np.array([np.mean(np.abs(s.flux - r.model_flux)) for s, r in pairs])
    pca = SurveyPCA(train, model.config.latent_dim)
    projected = pca.project(test)
    pca_mae = np.array([np.mean(np.abs(p["x"] - p["model"])[p["valid"]]) for p in projected])
    rows = [
        {"model": "StarGON (full fit)", "mae_mean": model_mae.mean(),
         "mae_median": float(np.median(model_mae)), "mae_p90": np.percentile(model_mae, 90)},
        {"model": f"PCA-{model.config.latent_dim}", "mae_mean": pca_mae.mean(),
         "mae_median": float(np.median(pca_mae)), "mae_p90": np.percentile(pca_mae, 90)},
    ]  # fmt: skip
    latents = {
        "StarGON latents (one GON step)": (_encode(model, train), _encode(model, test)),
        "PCA coefficients": (
            np.array([p["coeffs"] for p in pca.project(train)]),
            np.array([p["coeffs"] for p in projected]),
        ),
    }
    probe_rows = []
    for name, (x_train, x_test) in latents.items():
        row = {"features": name}
        for label in test[0].labels:
            y_train = np.array([s.labels[label] for s in train])
            y_test = np.array([s.labels[label] for s in test])
            row[label] = probe_rmse("linear", x_train, y_train, x_test, y_test)[0]
        probe_rows.append(row)
    print(f"device: CPU, {torch.get_num_threads()} threads; checkpoint {args.checkpoint}; "
          f"{args.n} unseen emulator spectra\n")  # fmt: skip
    print(table(rows, ["model", "mae_mean", "mae_median", "mae_p90"]))
    print("\nLinear probe RMSE, latents → emulator labels\n")
    print(table(probe_rows, ["features", *test[0].labels]))


def _encode(model, spectra, batch_size: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(spectra), batch_size):
        out.append(model.encode(make_batch(spectra[start : start + batch_size])).numpy())
    return np.concatenate(out)


if __name__ == "__main__":
    main()
