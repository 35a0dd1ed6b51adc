#!/usr/bin/env bash
# The fifth release, the first stage of the embedded default model (train/recipes/grow.sh grows
# it into the sixth, now in assets/default): every real survey in the data folder plus 1,000
# Payne-emulator spectra as the separate survey payne_synthetic; Gauss–Newton GON step with a
# N(0, I) latent prior, atmosphere masked, detail finer than the data penalised. The fifth
# release: 7,500 steps of 128 spectra × 2,000 pixels (1,920 M pixel reads, 10× the third's), in
# two stages. The first 5,000 steps are the fourth release (79 min on 2 CPU cores); the second
# resumes them with the step count raised to 7,500, which stretches the cosine learning-rate
# decay: the rate climbs back to 94 % at step 5,000 and falls to 5 % again by step 7,500
# (benchmarks/README.md, "Learning curves"). Safe to re-run: `--resume` continues from the last
# checkpoint. Then
#   stargon release runs/default            # then train/recipes/grow.sh
set -euo pipefail
for steps in 5000 7500; do
  stargon train --data "${STARGON_DATA:-../shared/data}" --out "${1:-runs/default}" \
    --steps "$steps" --batch-size 128 --n-pixels 2000 --warmup-steps 300 --rv-every 1000 \
    --synthetic 1000 --survey-balance 0.5 --lr-decay-from 0.6 \
    --inner-step gauss_newton --prior-precision 1 --roughness 100 --coverage-count 20 \
    --checkpoint-every 250 --held-out-every 250 --no-package --resume
done
