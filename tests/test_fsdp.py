"""A model sharded over two processes (model.shard=fsdp: FSDP2 over gloo, on CPU) gives the results
of one process: the same checkpoints, scores, selection and evaluation, in the same files."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from fsdp_worker import SETTINGS, examples, train

from rose.config import load_config
from rose.distributed import Dist
from rose.errors import ConfigError
from rose.store import load_tensors, read_json

TESTS = Path(__file__).parent


def _torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_same_checkpoint(a: Path, b: Path, atol: float) -> None:
    """Adapter weights and AdamW moments, tensor by tensor, and the epoch's learning rates."""
    for name in ("adapter/adapter_model.safetensors", "optimizer.safetensors"):
        want, got = load_tensors(a / name), load_tensors(b / name)
        assert want.keys() == got.keys(), name
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
            assert torch.allclose(got[key], want[key], rtol=1e-4, atol=atol), (key, (got[key] - want[key]).abs().max())
    assert read_json(b / "state.json")["lrs"] == read_json(a / "state.json")["lrs"]


def test_sharded_training_and_resuming_match_one_process(tokenizer, demo_files, tmp_path, one_thread):
    """Uneven micro-batch passes (padded), clipping and a resume from a checkpoint, on a tiny Llama."""
    rows = examples(tokenizer, demo_files["pool"])
    assert min(len(r) for r in rows) > SETTINGS.micro_batch_tokens  # each example a micro-batch: uneven passes
    one = train(tmp_path / "one", rows, tokenizer, Dist())
    unclipped = train(tmp_path / "unclipped", rows, tokenizer, Dist(), dataclasses.replace(SETTINGS, max_grad_norm=0.0))
    a, b = (load_tensors(c[-1].adapter / "adapter_model.safetensors") for c in (one, unclipped))
    assert any(not torch.allclose(a[k], b[k], atol=1e-4) for k in a)  # clipping acts
    _torchrun(str(TESTS / "fsdp_worker.py"), str(demo_files["pool"]), str(tmp_path / "two"))
    for ckpt in one:
        _assert_same_checkpoint(ckpt.path, tmp_path / "two/full" / ckpt.path.name, atol=1e-6)
    _assert_same_checkpoint(tmp_path / "two/full/epoch-2", tmp_path / "two/resumed/epoch-2", atol=1e-6)


def test_sharded_pipeline_on_two_processes_matches_one(finished_run, demo_files, tmp_path):
    """Every stage on the tiny demo pipeline, against `conftest.finished_run` (one process): the
    support check, warm-up (with a resume point, gathered whole, after every step), base
    log-probs, gradients, fine-tune and evaluation all run sharded."""
    single_dir, _, _ = finished_run
    run_dir = tmp_path / "run"
    config = tiny_config(run_dir, demo_files, **{"model.shard": "fsdp", "warmup.resume_every": 1})
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps(dataclasses.asdict(config)))
    _torchrun("-m", "rose", "-q", "run", str(cfg))
    for epoch in ("epoch-1", "epoch-2"):
        _assert_same_checkpoint(single_dir / "warmup" / epoch, run_dir / "warmup" / epoch, atol=1e-6)
    shards = sorted(p.name for p in (run_dir / "grads/train/epoch-1").glob("shard-*.npy"))
    assert shards == sorted(p.name for p in (single_dir / "grads/train/epoch-1").glob("shard-*.npy")) and len(shards) == 3
    two, one = np.load(run_dir / "scores/scores.npy"), np.load(single_dir / "scores/scores.npy")
    assert np.allclose(two, one, rtol=1e-3, atol=1e-4), np.abs(two - one).max()
    ids = lambda d: [row["id"] for row in read_json(d / "selection/selection.json")["selected"]]
    assert ids(run_dir) == ids(single_dir)
    metrics, reference = read_json(run_dir / "eval/metrics.json"), read_json(single_dir / "eval/metrics.json")
    assert metrics.keys() == reference.keys()
    for key in ("heldout_pref_acc", "reward_margin", "val_dpo_loss", "golden_nll", "base_golden_nll"):
        assert metrics[key] == pytest.approx(reference[key], rel=1e-4), key


def test_quantized_weights_are_not_sharded():
    with pytest.raises(ConfigError, match="model.shard: fsdp cannot shard quantized base weights"):
        load_config(None, ["model.shard=fsdp", "model.kwargs={quantization_config: {quant_method: bitsandbytes}}"])
    with pytest.raises(ConfigError, match="unknown value 'ddp'"):
        load_config(None, ["model.shard=ddp"])
