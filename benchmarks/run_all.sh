#!/usr/bin/env bash
# Regenerate every benchmark table and BENCHMARKS.md (about 25-35 min on 2 idle cores).
# Results and cached phantoms live in runs/bench/. Run on a quiet machine: the load average
# before and after each benchmark is recorded next to its table.
#   bash benchmarks/run_all.sh            # everything
#   BENCH_ONLY="latent_vs_pixel batched_vs_naive" bash benchmarks/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# What `latentseg segment` sets for itself (see BENCHMARKS.md, Threads), so in-process numbers match it.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
ONLY=${BENCH_ONLY:-"standard_case preview before_after latent_vs_pixel batched_vs_naive onnx_vs_torch steps_vs_dice peak_rss"}
run() { echo "== $1 ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))" >&2; }
for name in $ONLY; do
  run "$name"
  case "$name" in
    standard_case) $PY -m benchmarks.standard_case ;;
    preview) $PY -m benchmarks.standard_case --name preview --targets liver --ensemble 1 --repeats 3 ;;
    before_after) $PY -m benchmarks.before_after ;;
    latent_vs_pixel) $PY -m benchmarks.latent_vs_pixel ;;
    batched_vs_naive) $PY -m benchmarks.batched_vs_naive ;;
    onnx_vs_torch) $PY -m benchmarks.onnx_vs_torch ;;
    steps_vs_dice) $PY -m benchmarks.steps_vs_dice ;;
    peak_rss) $PY -m benchmarks.peak_rss ;;
    *) echo "unknown benchmark: $name" >&2; exit 2 ;;
  esac
done
$PY -m benchmarks.report
