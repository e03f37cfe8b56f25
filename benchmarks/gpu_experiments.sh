#!/usr/bin/env bash
# The GPU study behind docs/results.md: SHP and HH comparisons with their budget and few-shot sweeps.
#
#   [ROSE_TIME_LIMIT=SECONDS] [WORKERS_PER_GPU=1] benchmarks/gpu_experiments.sh [KEY=VALUE ...]
#
# Extra overrides go to every command.
# 1) The shared and largest work (warm-up, pool gradients, the full-pool fine-tune that both tasks
#    evaluate) runs once under torchrun on every visible GPU (`rose compare --shared-only`).
# 2) Then WORKERS_PER_GPU `rose compare` workers per task and GPU share the rest (one by default:
#    two fill an H100 better, since one SmolLM2 process keeps it busy only about half the time,
#    but two workers ran out of memory once in the run at commit f421739 and four in the one at
#    e6cba53, both 2026-11-25). Stage folders are locked while written, so each worker takes what
#    no other holds, and a worker that dies leaves its variant to the others.
# Everything resumes: run the script again after an interruption; ROSE_TIME_LIMIT stops it cleanly
# before a wall-clock limit. To keep variants measured earlier (docs/results/<task>/variants.json),
# copy each to runs/<task>/compare/results.json first: variants listed there are not redone.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
limit=${ROSE_TIME_LIMIT:-0}
per_gpu=${WORKERS_PER_GPU:-1}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
gpus=$($py -c "import torch; print(max(1, torch.cuda.device_count()))")
left() { if ((limit)); then echo $((limit - SECONDS)); else echo 999999; fi; }
(($(left) > 20)) || { echo "time limit reached; run again to continue"; exit 3; }

timeout "$(left)" $py -m torch.distributed.run --standalone --nproc-per-node "$gpus" -m rose compare --shared-only \
    configs/shp.yaml "$@"

mkdir -p runs
pids=()
for ((g = 0; g < gpus; g++)); do
  for ((w = 0; w < per_gpu; w++)); do
    for task in shp hh; do
      CUDA_VISIBLE_DEVICES=$g timeout "$(left)" $py -m rose compare "configs/$task.yaml" "compare.results_json=docs/results/$task.json" "$@" \
          >"runs/worker-$task-$g-$w.log" 2>&1 &
      pids+=($!)
    done
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
((status == 0)) || { echo "a worker stopped (exit $status): see runs/worker-*.log; run again to continue"; exit "$status"; }
echo "all experiments done"
