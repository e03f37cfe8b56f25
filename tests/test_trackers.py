"""Trackers (`report_to`): what a run logs, read back from each tracker's own files (all four offline)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import llama_config

from rose.config import load_config, to_dict
from rose.errors import ConfigError
from rose.pipeline import run_stages
from rose.store import read_json

pytestmark = pytest.mark.xdist_group("trackers")  # one worker runs the module, so its module fixture runs once


TRACKERS = ["tensorboard", "wandb", "mlflow", "trackio"]
Logged = dict[str, list[tuple[int, np.float32]]]  # "series/name" -> [(step, value)], as a tracker stored them


@pytest.fixture(scope="module")
def tracked(tiny_run, demo_files, tiny_model_dir, tmp_path_factory):
    """A rerun of the tiny run with a 2-epoch fine-tune that reports to every tracker at once, each
    offline or to local files (wandb offline mode, a file-store MLflow, Trackio's local database)."""
    root = tmp_path_factory.mktemp("trackers")
    run_dir = root / "run"
    shutil.copytree(tiny_run[0], run_dir)
    config = llama_config(run_dir, demo_files, tiny_model_dir, **{"finetune.epochs": 2, "report_to": f"[{', '.join(TRACKERS)}]"})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_SILENT", "true")
        env.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        env.setenv("TRACKIO_DIR", str(root / "trackio"))
        run_stages(config, cache=root / "cache")
    return root, run_dir, config


def _by_series_step(rows: list[dict]) -> Logged:
    """Rows of {"series/name": value, "series/step": step}, as rose logs them, per name."""
    out: Logged = {}
    for row in rows:
        for key, value in row.items():
            series, _, name = key.partition("/")
            if name and name != "step":
                out.setdefault(key, []).append((int(row[f"{series}/step"]), np.float32(value)))
    return out


def _wandb_records(file: Path):
    """The protobuf records of an offline run's .wandb file: after a 7-byte header (":W&B", magic,
    version), LevelDB's log format, records cut into chunks (7-byte header: CRC, length, type) that
    never cross a 32 KiB block."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, record = file.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        record += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            yield wandb_internal_pb2.Record.FromString(record)
            record = b""


def _logged(tracker: str, root: Path, run_dir: Path) -> tuple[Logged, dict]:
    """What the tracker stored, read back with its own reader: the logged values and the run's config."""
    if tracker == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        return {tag: [(e.step, np.float32(e.value)) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}, {}
    if tracker == "wandb":
        (file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        records = list(_wandb_records(file))
        rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item} for r in records if r.HasField("history")]
        (run,) = [r.run for r in records if r.HasField("run")]
        config = {item.key: json.loads(item.value_json) for item in run.config.update if not item.key.startswith("_")}  # wandb's own
        return _by_series_step(rows), config
    if tracker == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient((root / "mlruns").as_uri())
        (run,) = client.search_runs([client.get_experiment_by_name("rose").experiment_id])
        logged = {key: [(m.step, np.float32(m.value)) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
                  for key in run.data.metrics}
        return logged, json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(root))).read_text())
    from trackio.sqlite_storage import SQLiteStorage

    assert SQLiteStorage.get_project_db_path("rose").parent == root / "trackio"  # where TRACKIO_DIR sent it
    config = {k: v for k, v in (SQLiteStorage.get_run_config("rose", run_dir.name) or {}).items() if not k.startswith("_")}  # Trackio's own
    return _by_series_step(SQLiteStorage.get_logs("rose", run_dir.name)), config


@pytest.mark.parametrize("tracker", TRACKERS)
def test_each_tracker_gets_the_training_losses_lrs_stage_timings_and_metrics(tracker, tracked):
    """Every step of both fine-tune epochs is logged, the last epoch's losses and learning rates are
    the ones the training saved with its checkpoint, and the stage timings and final metrics are the
    run's own; the trackers that keep a config keep the run's."""
    root, run_dir, config = tracked
    logged, logged_config = _logged(tracker, root, run_dir)
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
    if tracker != "tensorboard":
        assert logged_config == json.loads(json.dumps(to_dict(config))), tracker


def test_a_tracker_whose_package_is_missing_is_a_config_error(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match="report_to.*wandb needs the package 'wandb'"):
        load_config(None, ["report_to=[wandb]"])
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        load_config(None, ["report_to=[neptune]"])
