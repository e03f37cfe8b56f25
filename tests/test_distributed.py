"""Two processes under torchrun (gloo, CPU) give the scores and selection of one process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
from conftest import tiny_config


def test_torchrun_two_processes_match_one(finished_run, demo_files, tmp_path):
    single_dir, _, _ = finished_run
    config = tiny_config(tmp_path / "run", demo_files)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps(dataclasses.asdict(config)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "rose", "-q", "run", str(cfg)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = sorted((tmp_path / "run/grads/train/epoch-1").glob("shard-*.npy"))
    assert len(shards) == 3  # written by both ranks (every other shard each)
    two = np.load(tmp_path / "run/scores/scores.npy")
    one = np.load(single_dir / "scores/scores.npy")
    assert np.allclose(two, one, rtol=1e-3, atol=1e-4), np.abs(two - one).max()
    ids = lambda d: [row["id"] for row in json.loads((d / "selection/selection.json").read_text())["selected"]]
    assert ids(tmp_path / "run") == ids(single_dir)
