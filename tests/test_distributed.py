"""Two processes under torchrun (gloo, CPU) give the scores, selection and fine-tune of one process
(on the tiny random Llama: what is tested is the processes' split of the work, not the model)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import llama_config

from rose.store import load_tensors, read_json


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tiny_run, demo_files, tiny_model_dir, tmp_path):
    """`rose run` under torchrun against the single-process tiny_run: the warm-up and the
    fine-tune are data-parallel (DDP), each rank writes every other pool-gradient shard (three each
    per checkpoint), and the scores, the selection, the fine-tuned adapter and its evaluation come
    out the same. The base-model log-probs (rank 0 alone) are tiny_run's, by key."""
    single_dir, _, _ = tiny_run
    config = llama_config(tmp_path / "run", demo_files, tiny_model_dir, **{"gradients.shard_size": 8})  # 6 shards of 8 per checkpoint
    shutil.copytree(single_dir / "base_logprobs", tmp_path / "run/base_logprobs")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps(dataclasses.asdict(config)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "rose", "-q", "run", str(cfg)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)  # a safety net against a hang only
    assert done.returncode == 0, done.stderr[-3000:]
    two_dir = tmp_path / "run"
    for epoch in ("epoch-1", "epoch-2"):
        assert len(list((two_dir / "grads/train" / epoch).glob("shard-*.npy"))) == 6
    two, one = np.load(two_dir / "scores/scores.npy"), np.load(single_dir / "scores/scores.npy")
    assert np.allclose(two, one, rtol=1e-3, atol=1e-4), np.abs(two - one).max()
    ids = lambda d: [row["id"] for row in read_json(d / "selection/selection.json")["selected"]]
    assert ids(two_dir) == ids(single_dir)
    adapter = lambda d: load_tensors(d / "finetune" / read_json(d / "finetune/manifest.json")["adapter"] / "adapter_model.safetensors")
    a, b = adapter(two_dir), adapter(single_dir)
    assert a.keys() == b.keys()
    # B starts at zero, so it is what the fine-tune learned. Summation order differs between one and two
    # processes, and Adam's first steps turn that into visible changes of a few weights whose gradient is
    # near zero (2e-7 of B's norm measured here, 2e-4 on SmolLM2); ranks that did not average their gradients would be far off
    learned = [k for k in a if "lora_B" in k]
    diff = torch.cat([(a[k] - b[k]).flatten() for k in learned]).norm() / torch.cat([b[k].flatten() for k in learned]).norm()
    assert diff < 1e-2, diff
    m2, m1 = read_json(two_dir / "eval/metrics.json"), read_json(single_dir / "eval/metrics.json")
    for key in ("reward_margin", "val_dpo_loss", "golden_nll"):  # the same to the last bit here (measured)
        assert m2[key] == pytest.approx(m1[key], rel=1e-4), key
