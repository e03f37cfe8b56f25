"""The whole pipeline on a tiny demo task: outputs and the planted skill on the real SmolLM2; skipping,
resuming and guards on the tiny random Llama."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FOLDERS, llama_config, tiny_config

from rose.config import load_config
from rose.context import Run
from rose.demo import PLANTED, planted_precision
from rose.errors import RunDirError
from rose.grads import oracle
from rose.grads.adam import adam_direction
from rose.models import lora_parameters
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
    scores = np.load(run_dir / "scores/scores.npy")  # its values: test_stage_math
    selected = [json.loads(line) for line in (run_dir / "selection/selected.jsonl").read_text().splitlines()]
    assert len(selected) == round(0.125 * n) and all(set(r) == {"dataset", "id", "messages"} for r in selected)
    assert {r["id"] for r in selected} == {run.pool.records[i].id for i in np.argsort(-scores)[: len(selected)]}  # the top scores
    summary, metrics = read_json(run_dir / "summary.json"), read_json(run_dir / "eval/metrics.json")  # metrics: test_evaluate
    assert {k: summary[k] for k in metrics} == metrics and summary["n_pairs"] == 8
    assert summary["golden_nll"] < summary["base_golden_nll"]  # fine-tuning on the planted skill helps its answers
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# rose run") and f"| heldout_pref_acc | {summary['heldout_pref_acc']:.4f} |" in report
    assert "warmup" in summary["stage_seconds"]


def test_selection_prefers_the_planted_skill(finished_run):
    run_dir, _, _ = finished_run
    precision, base_rate = planted_precision(run_dir)
    assert base_rate == pytest.approx(1 / 8)
    assert precision >= 3 * base_rate, f"only {precision:.2f} of the selection is {PLANTED}"


def test_rerun_skips_finished_stages_and_later_stages_follow_config_changes(tiny_run, demo_files, tiny_model_dir):
    run_dir, config, _ = tiny_run
    before = {f: (run_dir / f / MANIFEST).stat().st_mtime_ns for f in FOLDERS}
    run_stages(config)
    assert before == {f: (run_dir / f / MANIFEST).stat().st_mtime_ns for f in FOLDERS}
    recorded = load_config(run_dir / "config.yaml")  # the config the run recorded, with rose's version and git sha
    assert recorded == config
    run_stages(recorded)
    assert before == {f: (run_dir / f / MANIFEST).stat().st_mtime_ns for f in FOLDERS}
    with pytest.raises(RunDirError, match="another config"):
        run_stages(llama_config(run_dir, demo_files, tiny_model_dir, **{"select.fraction": 0.5}), ["select"])
    with pytest.raises(RunDirError, match="another config"):
        run_stages(llama_config(run_dir, demo_files, tiny_model_dir, **{"lora.r": 8}), ["warmup"])


def test_gradient_stages_record_each_checkpoints_wall_time(tiny_run):
    run_dir, _, run = tiny_run
    for folder in ("grads/val", "grads/train"):
        manifest = read_json(run_dir / folder / MANIFEST)
        seconds = manifest["checkpoint_seconds"]
        assert list(seconds) == [c.path.name for c in run.checkpoints()] and min(seconds.values()) > 0
        assert sum(seconds.values()) <= manifest["seconds"]


def test_a_stage_needs_its_inputs(tmp_path, demo_files):
    with pytest.raises(RunDirError, match="run `rose warmup`"):
        run_stages(tiny_config(tmp_path, demo_files), ["train-grads"])
    assert list(STAGES) == ["warmup", "base-logprobs", "val-grads", "train-grads", "score", "select", "finetune", "evaluate"]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _oracle_cosines(run, rows: int) -> np.ndarray:
    """[rows, M] cosines of the first pool examples' Adam directions with the validation pairs' DPO
    gradients at the first checkpoint, from plain autograd one example at a time."""
    ckpt = run.checkpoints()[0]
    run.model.load_adapter(ckpt.adapter)
    model, pad = run.model.model, run.model.pad_id
    params = list(lora_parameters(model).values())
    ref = torch.from_numpy(np.load(run.dir / "base_logprobs/validation_logps.npy"))
    val = torch.stack(list(oracle.dpo_grads(model, params, run.validation.encoded, ref, run.config.gradients.dpo_beta, pad)))
    train = torch.stack(list(oracle.sft_grads(model, params, run.pool.encoded[:rows], pad)))
    train = adam_direction(train.detach(), ckpt.moments(run.model.param_names))
    return (F.normalize(train.double(), dim=1) @ F.normalize(val.detach().double(), dim=1).T).numpy()


def test_exact_scoring_and_less_reuse_the_warmup_and_find_the_planted_skill(finished_run, demo_files, tmp_path):
    """Exact scoring stores the oracle's cosines, and the projected scores lie within the sketch's
    noise of the exact ones. At d = 2048 that noise is ~1/sqrt(d) per cosine (measured: 0.017, on
    scores whose spread is 0.024), so ranks agree only so far (Spearman 0.88 measured; 0.82 for an
    exact mode that forgets the Adam direction, which the oracle check and the distance catch)."""
    run_dir, _, run = finished_run
    planted = np.array([e.source == PLANTED for e in run.pool.records])
    projected = np.load(run_dir / "scores/scores.npy")
    # how often resume points are saved is no part of a stage's key either
    variants = {"exact": {"gradients.projection": "none", "warmup.resume_every": 7}, "less": {"select.method": "less"}}
    reused = {"exact": ["warmup", "base-logprobs"], "less": ["warmup", "base-logprobs", "train-grads"]}  # same keys
    for name, overrides in variants.items():
        for stage in reused[name]:
            shutil.copytree(run_dir / STAGES[stage].folder, tmp_path / name / STAGES[stage].folder)
        variant = run_stages(tiny_config(tmp_path / name, demo_files, **overrides), ["warmup", "base-logprobs", "val-grads", "train-grads", "score"])
        scores = np.load(tmp_path / name / "scores/scores.npy")
        assert planted[np.argsort(-scores)[: planted.sum()]].mean() >= 0.5  # base rate 1/8
        if name == "exact":  # shards hold cosines with the 4 validation pairs, not projections
            first_shard = np.load(sorted((tmp_path / name / "grads/train/epoch-1").glob("shard-*.npy"))[0])
            assert np.abs(first_shard[:4] - _oracle_cosines(variant, 4)).max() < 1e-4  # measured 1.4e-6; 0.044 without Adam
            assert np.sqrt(np.mean((scores - projected) ** 2)) < 1 / np.sqrt(2048)  # measured 0.014; 0.028 without Adam
            assert _spearman(scores, projected) > 0.8
        else:
            assert _spearman(scores, projected) > 0.3 and not np.allclose(scores, projected)


def test_with_a_cache_a_changed_fraction_redoes_only_select_finetune_and_evaluate(tiny_run, demo_files, tiny_model_dir, tmp_path, caplog):
    """`rose run` keeps stages by key (as `rose compare` does): the stages before select are reused
    untouched, select, fine-tune and evaluate are redone beside the old ones, and going back to the
    old fraction reuses those again. A stage whose input is missing is refused, naming what changed."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)  # written in place, before stages were kept by key
    config, cache = llama_config(run_dir, demo_files, tiny_model_dir), tmp_path / "cache"
    run_stages(config, cache=cache)  # moves the folders into the cache under their keys; runs nothing
    assert all((run_dir / f).is_symlink() for f in FOLDERS)
    mtimes = lambda: {f: (run_dir / f / MANIFEST).stat().st_mtime_ns for f in FOLDERS}  # noqa: E731
    first = mtimes()
    assert first == {f: (tiny_run[0] / f / MANIFEST).stat().st_mtime_ns for f in FOLDERS}
    caplog.set_level(logging.INFO, logger="rose")
    changed = run_stages(llama_config(run_dir, demo_files, tiny_model_dir, **{"select.fraction": 0.25}), cache=cache)
    second = mtimes()
    redone = {STAGES[n].folder for n in ("select", "finetune", "evaluate")}
    assert {f for f in FOLDERS if second[f] != first[f]} == redone
    assert "select.fraction: 0.125 -> 0.25" in caplog.text and f"select {Run(config).keys['select']} ->" in caplog.text
    selected = (run_dir / "selection/selected.jsonl").read_text().splitlines()
    assert len(selected) == round(0.25 * len(changed.pool.records))
    run_stages(config, cache=cache)  # back to the first fraction: its stages are reused by key
    assert mtimes() == first
    with pytest.raises(RunDirError, match=r"stage 'select' has not finished.*select.fraction: 0.125 -> 0.5"):
        run_stages(llama_config(run_dir, demo_files, tiny_model_dir, **{"select.fraction": 0.5}), ["finetune"], cache=cache)
    assert mtimes() == first  # refused before anything was linked or written
