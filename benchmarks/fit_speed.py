"""Time to fit one real spectrum, per instrument: one GON step (v known) and the full fit
(velocity scan + joint refinement), against an ivar-weighted PCA projection on the same
pixels (the cheapest possible "fit") measured in the same run.

    python -m benchmarks.fit_speed --checkpoint RUN/model
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import DATA, best_time, load_model, table
from stargon.model.batch import make_batch
from stargon.model.fit import fit_spectrum
from stargon.surveys import read_file

FILES = {
    "LAMOST": "lamost_dr1/SampleFits/spec-55862-B6212_sp06-003.fits",
    "GALAH arm": "galah_workshop/sample_data/210115/spectra/com/2101150001010013.fits",
    "APOGEE apVisit": "apogee_dr17/apVisit-r13-5095-55844-128.fits",
    "MILES": "miles/MILES_res2.50_star_m0001V.fits",
    "BOSS": "boss/spec-3586-55181-0500.fits",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    model, pyramid, templates = load_model(args.checkpoint)
    rows = []
    for name, path in FILES.items():
        spectrum = read_file(DATA / path)[0]
        batch = make_batch([spectrum])

        def one_step(batch=batch):
            basis = model.basis(batch, pyramid)
            return model.chi2(model.encode(batch, basis), basis, batch)

        def refined(spectrum=spectrum):
            return fit_spectrum(model, spectrum, pyramid=pyramid, templates=templates)

        components = torch.randn(model.config.latent_dim + 1, spectrum.n_pixels)
        weights = torch.as_tensor(spectrum.ivar).float().sqrt()
        flux = torch.as_tensor(spectrum.flux).float()

        def pca(components=components, weights=weights, flux=flux):
            return torch.linalg.lstsq((components * weights).T, (flux * weights)[:, None])

        t_pca = best_time(pca)
        t_one = best_time(one_step)
        t_fit = best_time(refined, repeat=3)
        rows.append({
            "spectrum": name, "pixels": spectrum.n_pixels, "frame": spectrum.frame,
            "one_step_ms": 1e3 * t_one, "refined_ms": 1e3 * t_fit, "pca_projection_ms": 1e3 * t_pca,
            "one_step_vs_pca": t_one / t_pca,
        })  # fmt: skip
    print(f"device: CPU, {torch.get_num_threads()} threads; checkpoint {args.checkpoint}\n")
    print(table(rows, ["spectrum", "pixels", "frame", "one_step_ms", "refined_ms",
                       "pca_projection_ms", "one_step_vs_pca"]))  # fmt: skip


if __name__ == "__main__":
    main()
