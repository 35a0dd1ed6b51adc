"""Latent invariance of any checkpoint, e.g. an old default model against the new one.

Runs the invariance measurements of `stargon evaluate` (S/N correlation per survey, MILES
degraded to S/N 100/30/10, LAMOST DR8 repeat visits) and prints them as tables. A checkpoint
without a stored whitening is measured in its raw latents. The fits use today's fitting code
(MAP under the checkpoint's prior), so for a checkpoint of the gradient-step era only the
one-step S/N correlation (`--snr-only`) describes how it behaved.

    python benchmarks/latent_invariance.py --checkpoint assets/default
"""

from __future__ import annotations

import argparse

from common import DATA, table

from stargon.evaluate import invariance
from stargon.evaluate.context import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--snr-only", action="store_true", help="one-step latents only (no fits)")
    args = parser.parse_args()
    ev = prepare(args.checkpoint, DATA, ["miles", "stelib", "lamost_dr1", "lamost_dr8"])
    print(f"checkpoint {ev.checkpoint} ({ev.model.config.inner_step} step)\n")
    print(table(invariance.snr_correlation(ev), ["survey", "n", "spearman",
                                                 "partial_given_labels"]))  # fmt: skip
    if args.snr_only:
        return
    degraded = invariance.degradation(ev)
    print(f"\n{degraded['survey']}, {degraded['n_stars']} stars degraded and fitted\n")
    print(table(degraded["rows"], ["snr", "median_shift_in_sigma", "median_sigma_w"]))
    repeats = invariance.repeat_visits(ev)
    print("\n" + table([repeats], list(repeats)))


if __name__ == "__main__":
    main()
