"""Time to fit one real spectrum, per instrument: one GON step (v known), the full fit
(velocity scan + joint refinement) and the explorer's click-to-fit (`Explorer.fit`: the fit,
then the model's ±1σ band), against an ivar-weighted PCA projection on the same pixels (the
cheapest possible "fit") measured in the same run. The process keeps freed memory, as
`stargon serve` and `stargon fit` do.

`--baseline-rev` adds the full fit by an earlier commit's model code (`fit_batch.fit_of_commit`)
in the same run, and the ratio of the two.

    python -m benchmarks.fit_speed --checkpoint RUN/model --baseline-rev 081de38
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import DATA, best_time, load_fitter, median_time, table
from benchmarks.fit_batch import fit_of_commit
from stargon.explorer.state import Explorer
from stargon.model.batch import make_batch
from stargon.model.devices import keep_freed_memory
from stargon.surveys import read_file

FILES = {
    "LAMOST": "lamost_dr1/SampleFits/spec-55862-B6212_sp06-003.fits",
    "GALAH arm": "galah_workshop/sample_data/210115/spectra/com/2101150001010013.fits",
    "APOGEE apVisit": "apogee_dr17/apVisit-r13-5095-55844-128.fits",
    "MILES": "miles/MILES_res2.50_star_m0001V.fits",
    "BOSS": "boss/spec-3586-55181-0500.fits",
    "MIKE echelle": "mike/hd122563.fits",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--baseline-rev", default=None, help="a commit whose fit to time too")
    args = parser.parse_args()
    keep_freed_memory()
    fitter = load_fitter(args.checkpoint)
    model, pyramid = fitter.model, fitter.pyramid
    explorer = Explorer(args.checkpoint)
    old_fit = fit_of_commit(args.baseline_rev, args.checkpoint) if args.baseline_rev else None
    rows = []
    for name, path in FILES.items():
        spectrum = read_file(DATA / path)[0]
        batch = make_batch([spectrum])

        def one_step(batch=batch):
            basis = model.basis(batch, pyramid)
            return model.chi2(model.encode(batch, basis), basis, batch)

        def refined(spectrum=spectrum):
            return fitter.fit([spectrum])

        components = torch.randn(model.config.latent_dim + 1, spectrum.n_pixels)
        weights = torch.as_tensor(spectrum.ivar).float().sqrt()
        flux = torch.as_tensor(spectrum.flux).float()

        def pca(components=components, weights=weights, flux=flux):
            return torch.linalg.lstsq((components * weights).T, (flux * weights)[:, None])

        def click(spectrum=spectrum):
            return explorer.fit(explorer.new_view(), spectrum)

        t_pca = best_time(pca)
        t_one = best_time(one_step)
        t_fit = best_time(refined, repeat=3)
        t_click = median_time(click, repeat=5)
        if old_fit:
            t_old = best_time(lambda spectrum=spectrum: old_fit([spectrum]), repeat=3)
            baseline = {f"refined_ms at {args.baseline_rev}": 1e3 * t_old,
                        f"refined vs {args.baseline_rev}": t_old / t_fit}  # fmt: skip
        rows.append({
            "spectrum": name, "pixels": spectrum.n_pixels, "frame": spectrum.frame,
            "one_step_ms": 1e3 * t_one, "refined_ms": 1e3 * t_fit,
            "click_to_fit_ms": 1e3 * t_click, "pca_projection_ms": 1e3 * t_pca,
            "one_step_vs_pca": t_one / t_pca, **(baseline if old_fit else {}),
        })  # fmt: skip
    print(f"device: CPU, {torch.get_num_threads()} threads; checkpoint {args.checkpoint}\n")
    print("refined: fastest of 3; click to fit: median of 5 (both after a warm-up)\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
