#!/usr/bin/env bash
# The embedded default model (assets/default): every real survey in the data folder plus 1,000
# Payne-emulator spectra as the separate survey payne_synthetic; Gauss–Newton GON step with a
# N(0, I) latent prior, atmosphere masked, detail finer than the data penalised. 18 min on
# 2 CPU cores (benchmarks/README.md, "A training step"; 57 min before issue 20). Safe to
# re-run: `--resume` continues from the last checkpoint. Then
#   stargon release runs/default --out assets/default
set -euo pipefail
stargon train --data "${STARGON_DATA:-../shared/data}" --out "${1:-runs/default}" \
  --steps 3000 --batch-size 64 --n-pixels 1000 --warmup-steps 300 --rv-every 1000 \
  --synthetic 1000 --survey-balance 0.5 --lr-decay-from 0.6 \
  --inner-step gauss_newton --prior-precision 1 --roughness 100 --coverage-count 20 \
  --checkpoint-every 100 --no-package --resume
