#!/usr/bin/env bash
# The GPU experiments behind docs/results.md and docs/benchmarks/projection_fidelity.json (one 80 GB GPU).
#
#   [ROSE_TIME_LIMIT=SECONDS] benchmarks/gpu_experiments.sh [KEY=VALUE ...]
#
# Extra overrides go to every command. Every command resumes where an interrupted one stopped
# (finished stages and variants are kept), so the script can simply be run again until it
# completes; ROSE_TIME_LIMIT stops it cleanly before a wall-clock limit. Order: the two main
# comparisons, the projection-fidelity check (it reuses the warm-up), then the budget and
# few-shot sweeps.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
limit=${ROSE_TIME_LIMIT:-0}
step() {
  if ((limit)); then
    local left=$((limit - SECONDS))
    ((left > 20)) || { echo "time limit reached; run again to continue"; exit 3; }
    timeout "$left" "$@"
  else
    "$@"
  fi
}
main_only=('compare.budgets=[]' 'compare.shots={}')
step $py -m rose compare configs/shp.yaml "$@" "${main_only[@]}"
step $py -m rose compare configs/hh.yaml "$@" "${main_only[@]}"
step $py benchmarks/projection_fidelity.py configs/shp.yaml "$@" run_dir=runs/fidelity --cache runs/cache \
    --sample 4000 --out docs/benchmarks/projection_fidelity.json
step $py -m rose compare configs/shp.yaml "$@"
step $py -m rose compare configs/hh.yaml "$@"
echo "all experiments done"
