"""Fitting throughput against batch size: `fit_spectra` on real LAMOST DR8 (observed frame, v
fitted) and MILES (rest frame) spectra, B at a time, against one at a time (B = 1, the
previous release's path) in the same run; with the largest differences from the one-at-a-time
fits (|Δv| in σ_v, χ²/dof in %, z in σ_z). `--refine-steps 20,0` adds fits without the
Gauss–Newton refinement (the velocity scan and the encoder step only), compared with the same
one-at-a-time refined fits.

    python -m benchmarks.fit_batch --n 64 --batch-sizes 1,8,32,64 --refine-steps 20,0
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.common import DATA, load_model, table
from stargon.model.fit import fit_spectra
from stargon.surveys import read_file

FOLDERS = {"LAMOST DR8": "lamost_dr8/20220313_CCF_test_grouped_fits", "MILES": "miles"}


def spectra_of(folder: str, n: int) -> list:
    files = sorted(p for p in (DATA / folder).iterdir() if p.name.endswith((".fits", ".fits.gz")))
    return [read_file(path)[0] for path in files[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--n", type=int, default=64, help="spectra per survey")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--refine-steps", default="20", help="e.g. 20,0 (0: no refinement)")
    args = parser.parse_args()
    model, pyramid, templates = load_model(args.checkpoint)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    settings = [(steps, size) for steps in map(int, args.refine_steps.split(",")) for size in sizes]
    for name, folder in FOLDERS.items():
        spectra = spectra_of(folder, args.n)
        reference = None
        for steps, size in settings:
            start = time.perf_counter()
            results = []
            for first in range(0, len(spectra), size):
                chunk = spectra[first : first + size]
                results += fit_spectra(
                    model, chunk, refine_steps=steps, pyramid=pyramid, templates=templates
                )
            elapsed = time.perf_counter() - start
            reference = reference or results
            pairs = list(zip(results, reference, strict=True))
            dv = [abs(r.v_kms - a.v_kms) / a.v_err_kms for r, a in pairs]
            dchi2 = [abs(r.chi2_dof / a.chi2_dof - 1) for r, a in pairs]
            dz = [np.max(np.abs(r.z - a.z) / np.sqrt(np.diag(a.z_cov))) for r, a in pairs]
            rows.append({
                "spectra": name, "n": len(spectra),
                "pixels": int(np.median([s.n_pixels for s in spectra])),
                "refine steps": steps, "batch size": size, "spectra/s": len(spectra) / elapsed,
                "vs one at a time": None, "max |Δv| / σ_v": max(dv),
                "max |Δχ²/dof| %": 100 * max(dchi2), "max |Δz| / σ_z": max(dz),
            })  # fmt: skip
        base = rows[-len(settings)]["spectra/s"]
        for row in rows[-len(settings) :]:
            row["vs one at a time"] = row["spectra/s"] / base
    print(f"device: CPU, {torch.get_num_threads()} threads; checkpoint {args.checkpoint}\n")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
