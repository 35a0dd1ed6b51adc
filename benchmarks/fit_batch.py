"""Fitting throughput against batch size: `Fitter.fit_batch` on real LAMOST DR8 (observed frame, v
fitted) and MILES (rest frame) spectra, B at a time, against one at a time (B = 1) and against
the fit of an earlier commit (`--baseline-rev`: its model code — decoder, GON, fit — on the
same weights) in the same run; with the largest differences from this code's one-at-a-time
fits (|Δv| in σ_v, χ²/dof in %, z in σ_z). `--refine-steps 20,0` adds fits without the
Gauss–Newton refinement (the velocity scan and the encoder step only). The process keeps freed
memory, as `stargon fit` does (`keep_freed_memory`).

    python -m benchmarks.fit_batch --n 128 --batch-sizes 1,16,64 --refine-steps 20,0 \\
        --baseline-rev 081de38
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.common import DATA, code_at, load_fitter, ratio_to_first, table
from stargon.model.checkpoint import load_checkpoint, resolve_checkpoint
from stargon.model.devices import keep_freed_memory
from stargon.surveys import read_file

FOLDERS = {"LAMOST DR8": "lamost_dr8/20220313_CCF_test_grouped_fits", "MILES": "miles"}


def spectra_of(folder: str, n: int) -> list:
    files = sorted(p for p in (DATA / folder).iterdir() if p.name.endswith((".fits", ".fits.gz")))
    return [read_file(path)[0] for path in files[:n]]


def fit_of_commit(rev: str, checkpoint: str | None) -> Callable:
    """`fit_spectra` as the model code was at commit `rev` (model/decoder.py, gon.py and
    fit.py; the rest of the package as it is), on its own copy of the model, with its own
    pyramid and template bank: fit(spectra, refine_steps=20) → results."""
    old = code_at(rev, ("pyramid", "decoder", "gon", "fit"))
    model, _, extra = load_checkpoint(resolve_checkpoint(checkpoint))
    old_model = old["gon"].StarGON(model.config)
    old_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        pyramid = old_model.decoder.pyramid()
    templates = old["fit"].template_pyramid(old_model, extra.get("prototypes"))

    def fit(spectra, refine_steps: int = 20):
        return old["fit"].fit_spectra(
            old_model, spectra, pyramid=pyramid, templates=templates, refine_steps=refine_steps
        )

    return fit


def timed_fits(fit: Callable, spectra: list, size: int, steps: int) -> tuple[list, float]:
    """All fits, `size` spectra at a time, and the seconds they took."""
    start = time.perf_counter()
    results = []
    for first in range(0, len(spectra), size):
        results += fit(spectra[first : first + size], steps)
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--n", type=int, default=128, help="spectra per survey")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--refine-steps", default="20", help="e.g. 20,0 (0: no refinement)")
    parser.add_argument("--baseline-rev", default=None, help="a commit whose fit to time too")
    args = parser.parse_args()
    keep_freed_memory()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    settings = [("this", steps, size) for steps in map(int, args.refine_steps.split(","))
                for size in sizes]  # fmt: skip
    fitters = {steps: load_fitter(args.checkpoint, refine_steps=steps) for _, steps, _ in settings}
    fits = {"this": lambda spectra, steps=20: fitters[steps].fit_batch(spectra)}
    if args.baseline_rev:
        fits[args.baseline_rev] = fit_of_commit(args.baseline_rev, args.checkpoint)
        settings.append((args.baseline_rev, 20, max(sizes)))
    rows = []
    for name, folder in FOLDERS.items():
        spectra = spectra_of(folder, args.n)
        for fit in fits.values():  # warm-up: the first fit of an instrument blurs templates
            fit(spectra[:2])
        reference = None
        for code, steps, size in settings:
            results, elapsed = timed_fits(fits[code], spectra, size, steps)
            reference = reference or results
            pairs = list(zip(results, reference, strict=True))
            dv = [abs(r.v_kms - a.v_kms) / a.v_err_kms for r, a in pairs]
            dchi2 = [abs(r.chi2_dof / a.chi2_dof - 1) for r, a in pairs]
            dz = [np.max(np.abs(r.z - a.z) / np.sqrt(np.diag(a.z_cov))) for r, a in pairs]
            rows.append({
                "spectra": name, "n": len(spectra),
                "pixels": int(np.median([s.n_pixels for s in spectra])), "fit": code,
                "refine steps": steps, "batch size": size, "spectra/s": len(spectra) / elapsed,
                "vs one at a time": None, "max |Δv| / σ_v": max(dv),
                "max |Δχ²/dof| %": 100 * max(dchi2), "max |Δz| / σ_z": max(dz),
            })  # fmt: skip
        ratio_to_first(rows[-len(settings) :], "spectra/s", "vs one at a time")
    print(f"device: CPU, {torch.get_num_threads()} threads; checkpoint {args.checkpoint}\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
