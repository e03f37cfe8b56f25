"""Trackers (`report_to`): what a run logs, read back from TensorBoard's own event files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import tiny_config

from rose.config import load_config
from rose.errors import ConfigError
from rose.pipeline import run_stages
from rose.store import read_json


def _scalars(log_dir) -> dict[str, list[tuple[int, np.float32]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, np.float32(e.value)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_the_training_losses_lrs_stage_timings_and_metrics(finished_run, demo_files, tmp_path):
    """A rerun with a 2-epoch fine-tune: its per-step losses and learning rates are the ones the
    training saved with its checkpoint (the last epoch's), every step of both epochs is logged, and
    the stage timings and final metrics are the run's own."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], run_dir)
    config = tiny_config(run_dir, demo_files, **{"finetune.epochs": 2, "report_to": "[tensorboard]"})
    run_stages(config, cache=tmp_path / "cache")
    logged = _scalars(run_dir / "tensorboard")
    state = read_json(run_dir / "finetune/epoch-2/state.json")
    steps = state["global_step"]
    assert [s for s, _ in logged["finetune/loss"]] == list(range(steps))
    last_epoch = logged["finetune/loss"][steps - len(state["losses"]):]
    assert [v for _, v in last_epoch] == [np.float32(x) for x in state["losses"]]
    assert [v for _, v in logged["finetune/lr"][steps - len(state["lrs"]):]] == [np.float32(x) for x in state["lrs"]]
    assert "warmup/loss" not in logged  # the warm-up was reused, not trained again
    summary = read_json(run_dir / "summary.json")
    timings = {t.split("/")[1]: points for t, points in logged.items() if t.startswith("stage_seconds/")}
    assert timings == {k: [(0, np.float32(v))] for k, v in summary["stage_seconds"].items()}
    assert logged["eval/heldout_pref_acc"] == [(0, np.float32(summary["heldout_pref_acc"]))]


def test_a_tracker_whose_package_is_missing_is_a_config_error(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match="report_to.*wandb needs the package 'wandb'"):
        load_config(None, ["report_to=[wandb]"])
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        load_config(None, ["report_to=[neptune]"])
