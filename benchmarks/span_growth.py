"""How far would more basis functions lower the span floor? One survey's held-out spectra,
fitted by the embedded model: the fit's fractional RMS; the span floor, the best any weights
of the decoder's K+1 basis functions reach under the fit's continuum (`evaluate.holdout.
span_floor`); the floor with m more functions, the mean and principal components of the
training spectra's residuals (normalised spectrum − decoded model, on the survey's pixels);
and a PCA of the spectra themselves with as many components as latents. A floor that falls
well below PCA's with m more functions says a model with K + m functions could, with the
right latents.

    python -m benchmarks.span_growth                      # the Payne spectra, ≈ 1 min
    python -m benchmarks.span_growth --survey miles
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.decomposition import PCA

from benchmarks.common import DATA, table
from stargon.evaluate.holdout import SurveyPCA, fit_parts, span_floor
from stargon.model.fitter import Fitter
from stargon.model.release import Release
from stargon.train.dataset import SYNTHETIC_SURVEY, load_training_set


def residuals(fitter: Fitter, spectra: list, fits: list) -> np.ndarray:
    """(N, P) normalised spectrum − decoded model of each fit, on the survey's one pixel grid."""
    rows = []
    for spectrum, fit in zip(spectra, fits, strict=True):
        _, decoded, polynomial = fit_parts(fitter, spectrum, fit)
        rows.append(spectrum.flux[spectrum.valid] / polynomial - decoded)
    if len({len(row) for row in rows}) > 1:
        raise SystemExit("the survey's spectra do not share one pixel grid")
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--survey", default=SYNTHETIC_SURVEY)
    parser.add_argument("--n-train", type=int, default=300, help="training spectra for the PCA")
    parser.add_argument("--n-held", type=int, default=40, help="held-out spectra scored")
    args = parser.parse_args()
    folders = ["apogee_payne"] if args.survey == SYNTHETIC_SURVEY else [args.survey]
    synthetic = 1000 if args.survey == SYNTHETIC_SURVEY else 0
    data = load_training_set(DATA, surveys=folders, synthetic=synthetic, progress=False)
    members = [i for i in range(len(data.spectra)) if data.surveys[i] == args.survey]
    train = [data.spectra[i] for i in members if not data.held_out[i]][: args.n_train]
    held = [data.spectra[i] for i in members if data.held_out[i]][: args.n_held]
    release = Release.load(None)
    fitter = Fitter.from_release(release)
    train_fits, held_fits = fitter.fit(train), fitter.fit(held)
    components = PCA(64, random_state=0).fit(residuals(fitter, train, train_fits))
    extra_rows = np.vstack([components.mean_, components.components_])
    rows = []
    fit_rms = [span_floor(fitter, s, f)[0] for s, f in zip(held, held_fits, strict=True)]
    rows.append({"functions": "the model's fit", "median fractional RMS": np.median(fit_rms)})
    for m in (0, 4, 8, 16, 32, 64):
        extra = extra_rows[:m] if m else None  # the residuals' mean, then components
        floors = [
            span_floor(fitter, s, f, extra=extra)[1] for s, f in zip(held, held_fits, strict=True)
        ]
        what = f"span floor, K+1 = {release.model.config.n_basis + 1}" + (f" + {m}" if m else "")
        rows.append({"functions": what, "median fractional RMS": np.median(floors)})
    pca = SurveyPCA(train, release.model.config.latent_dim)
    pca_rms = [
        np.sqrt(np.mean((p["x"] - p["model"])[p["valid"]] ** 2)) / np.median(np.abs(p["x"]))
        for p in pca.project(held)
    ]
    rows.append({"functions": f"PCA-{pca.n_components} of the spectra",
                 "median fractional RMS": np.median(pca_rms)})  # fmt: skip
    print(f"{args.survey}: {len(held)} held-out spectra, residual PCA from {len(train)} "
          f"(python -m benchmarks.span_growth --survey {args.survey})\n")  # fmt: skip
    print(table(rows, ["functions", "median fractional RMS"]))


if __name__ == "__main__":
    main()
