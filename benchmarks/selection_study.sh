#!/usr/bin/env bash
# The selection study behind docs/results.md ("Which ROSE"): one task's main comparison at 5% with
# every ablation of configs/<task>.yaml (compare.ablations), the baselines and 3 fine-tune seeds each;
# with --sweeps, the budget (1, 5, 10%) and few-shot (1, 2, 5, 10) sweeps of the three best and the
# baselines instead, 3 seeds at every point.
#
#   [ROSE_TIME_LIMIT=SECONDS] [WORKERS_PER_GPU=2] benchmarks/selection_study.sh TASK [--sweeps] [KEY=VALUE ...]
#
# TASK is shp or hh; extra overrides go to every command (model.name=..., compare.methods=[...]).
# 1) The shared work (warm-up, pool gradients) runs once under torchrun on every visible GPU.
# 2) Then WORKERS_PER_GPU `rose compare` workers per GPU share the variants (stage folders are locked
#    while written; a SmolLM2 fine-tune keeps an H200 only partly busy). Every method's first
#    fine-tune seed runs before any second one, so a run stopped early still covers every method.
# On a machine reached through calls shorter than the study, start it with `benchmarks/detached.sh
# start LOG benchmarks/selection_study.sh TASK ...` and collect with `detached.sh wait`.
# Everything resumes: run it again after an interruption, on the same machine or, from the committed
# results file, on a fresh one (the finished variants are not redone; delete the file to start over).
# Results: docs/results/study/<task>.json (<task>-sweeps.json); `python benchmarks/study_table.py FILE`
# prints its tables.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:?usage: benchmarks/selection_study.sh shp|hh [KEY=VALUE ...]}
shift
sweeps=0
if [[ ${1:-} == --sweeps ]]; then sweeps=1; shift; fi
py=${PYTHON:-python3}
limit=${ROSE_TIME_LIMIT:-0}
per_gpu=${WORKERS_PER_GPU:-2}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
methods="[rose-paper, less, random, rose-rr-subtasks, rose-rr-pairs, rose-apart, rose-token-mean, rose-lr-dpo, rose-gist,
  rose-adam-val, rose-subtasks-mean, rose-shots-max, rose-last-ckpt, rds+, hybrid, bm25, embedding, less-rr-pairs]"
out=docs/results/study/$task.json
args=("configs/$task.yaml" "compare.methods=$methods" "compare.budget_methods=[]" "compare.shot_methods=[]")
if ((sweeps)); then  # the three best of the study (docs/results.md, "The decision") and the baselines
  best="[rose, rose-last-ckpt, rose-gist, less, random]"
  out=docs/results/study/$task-sweeps.json
  args=("configs/$task.yaml" "compare.methods=$best" "compare.budgets=[0.01, 0.1]" "compare.budget_methods=$best"
        "compare.shot_methods=$best")
fi
args+=("compare.results_json=$out" "$@")
run_dir=$($py -c 'import sys; from rose.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).run_dir)' "${args[@]}")
if [[ -f $out && ! -f $run_dir/compare/results.json ]]; then  # a fresh machine: go on from the committed results
  mkdir -p "$run_dir/compare"
  $py -c 'import json, sys; json.dump(json.load(open(sys.argv[1]))["variants"], open(sys.argv[2], "w"))' "$out" "$run_dir/compare/results.json"
fi
gpus=$($py -c "import torch; print(max(1, torch.cuda.device_count()))")
left() { if ((limit)); then echo $((limit - SECONDS)); else echo 999999; fi; }

timeout "$(left)" $py -m torch.distributed.run --standalone --nproc-per-node "$gpus" -m rose compare --shared-only "${args[@]}"
mkdir -p runs
pids=()
for ((g = 0; g < gpus; g++)); do
  for ((w = 0; w < per_gpu; w++)); do
    CUDA_VISIBLE_DEVICES=$g timeout "$(left)" $py -m rose compare "${args[@]}" >"runs/study-$task-$g-$w.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
((status == 0)) || { echo "a worker stopped (exit $status): see runs/study-*.log; run again to continue"; exit "$status"; }
$py -m rose compare --report-only "${args[@]}"
echo "study done: $out"
