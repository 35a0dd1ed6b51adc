#!/usr/bin/env bash
# The small CPU run reported in benchmarks/README.md (≈ 1 hour on 2 cores). Safe to re-run:
# `--resume` continues from the last checkpoint after an interruption.
set -euo pipefail
stargon train --data "${STARGON_DATA:-../shared/data}" --out "${1:-runs/cpu-small}" \
  --steps 3000 --batch-size 64 --n-pixels 1000 --warmup-steps 300 --rv-every 1000 \
  --checkpoint-every 100 --resume
