"""The whole pipeline on the real SmolLM2 and a tiny demo task: outputs, skipping, resuming, guards."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from conftest import FOLDERS, tiny_config

from rose.demo import PLANTED, planted_precision
from rose.errors import RunDirError
from rose.pipeline import run_stages
from rose.stages import STAGES
from rose.store import MANIFEST, read_json


def test_every_stage_writes_complete_outputs(finished_run):
    run_dir, config, run = finished_run
    for folder in FOLDERS:
        assert read_json(run_dir / folder / MANIFEST)["complete"] is True
    n = len(run.pool.records)
    train = np.concatenate([np.load(f) for f in sorted((run_dir / "grads/train/epoch-2").glob("shard-*.npy"))])
    assert train.shape == (n, 2048) and train.dtype == np.float16
    assert np.allclose(np.linalg.norm(train.astype(np.float64), axis=1), 1, atol=2e-3)
    val = np.load(run_dir / "grads/val/epoch-1/grads.npy")
    assert val.shape == (4, 2048) and np.allclose(np.linalg.norm(val, axis=1), 1, atol=1e-5)
    assert np.load(run_dir / "scores/scores.npy").shape == (n,)
    selected = [json.loads(line) for line in (run_dir / "selection/selected.jsonl").read_text().splitlines()]
    assert len(selected) == round(0.125 * n) and all(set(r) == {"dataset", "id", "messages"} for r in selected)
    summary = read_json(run_dir / "summary.json")
    assert 0 <= summary["heldout_pref_acc"] <= 1 and summary["n_pairs"] == 8 and summary["golden_nll"] > 0
    assert summary["val_dpo_loss"] > 0 and 0 <= summary["length_norm_pref_acc"] <= 1
    assert summary["golden_nll"] < summary["base_golden_nll"]  # fine-tuning on the planted skill helps its answers
    assert (run_dir / "report.md").read_text().startswith("# rose run")
    assert "warmup" in summary["stage_seconds"]


def test_selection_prefers_the_planted_skill(finished_run):
    run_dir, _, _ = finished_run
    precision, base_rate = planted_precision(run_dir)
    assert base_rate == pytest.approx(1 / 8)
    assert precision >= 3 * base_rate, f"only {precision:.2f} of the selection is {PLANTED}"


def test_rerun_skips_finished_stages_and_later_stages_follow_config_changes(finished_run, demo_files):
    run_dir, config, _ = finished_run
    before = {f: (run_dir / f / MANIFEST).stat().st_mtime_ns for f in FOLDERS}
    start = time.perf_counter()
    run_stages(config)
    assert time.perf_counter() - start < 30
    assert before == {f: (run_dir / f / MANIFEST).stat().st_mtime_ns for f in FOLDERS}
    with pytest.raises(RunDirError, match="another config"):
        run_stages(tiny_config(run_dir, demo_files, **{"select.fraction": 0.5}), ["select"])
    with pytest.raises(RunDirError, match="another config"):
        run_stages(tiny_config(run_dir, demo_files, **{"lora.r": 8}), ["warmup"])


def test_a_stage_needs_its_inputs(tmp_path, demo_files):
    with pytest.raises(RunDirError, match="run `rose warmup`"):
        run_stages(tiny_config(tmp_path, demo_files), ["train-grads"])
    assert list(STAGES) == ["warmup", "base-logprobs", "val-grads", "train-grads", "score", "select", "finetune", "evaluate"]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_exact_scoring_and_less_reuse_the_warmup_and_find_the_planted_skill(finished_run, demo_files, tmp_path):
    run_dir, _, run = finished_run
    planted = np.array([e.source == PLANTED for e in run.pool.records])
    projected = np.load(run_dir / "scores/scores.npy")
    # how often resume points are saved is no part of a stage's key either
    variants = {"exact": {"gradients.projection": "none", "warmup.resume_every": 7}, "less": {"select.method": "less"}}
    for name, overrides in variants.items():
        shutil.copytree(run_dir / "warmup", tmp_path / name / "warmup")  # same key: reused, not retrained
        run_stages(tiny_config(tmp_path / name, demo_files, **overrides), ["warmup", "base-logprobs", "val-grads", "train-grads", "score"])
        scores = np.load(tmp_path / name / "scores/scores.npy")
        assert planted[np.argsort(-scores)[: planted.sum()]].mean() >= 0.5  # base rate 1/8
        assert _spearman(scores, projected) > 0.3
        if name == "exact":  # shards hold cosines with the 4 validation pairs, not projections
            first_shard = sorted((tmp_path / name / "grads/train/epoch-1").glob("shard-*.npy"))[0]
            assert np.load(first_shard).shape[1] == 4
        else:
            assert not np.allclose(scores, projected)
