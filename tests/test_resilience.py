"""Resume after SIGKILL in the gradient stage; byte-identical selections; hostile input via the CLI."""

from __future__ import annotations

import dataclasses
import json
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import llama_config

from rose.cli import main
from rose.models import resolve_model
from rose.store import MANIFEST


def _write_config(path: Path, config) -> Path:
    path.write_text(json.dumps(dataclasses.asdict(config)))  # JSON is YAML
    return path


def _manifests(run_dir: Path) -> dict[str, int]:
    return {str(m): m.stat().st_mtime_ns for m in run_dir.rglob(MANIFEST)}


# `rose train-grads CONFIG` that stops once the third pool-gradient shard is written under its
# temporary name (not yet renamed into place), says so on stdout and waits there to be killed
STOP_IN_THIRD_SHARD = """
import sys
import numpy as np
from pathlib import Path
from rose.cli import main

save, shards = np.save, []

def save_then_stop(file, array, *args, **kwargs):
    save(file, array, *args, **kwargs)
    if Path(getattr(file, "name", str(file))).name.startswith("shard-"):
        shards.append(file)
        if len(shards) == 3:
            file.flush()
            print("stopped", flush=True)
            sys.stdin.read()

np.save = save_then_stop
sys.exit(main(["-q", "train-grads", sys.argv[1]]))
"""


@pytest.mark.slow
def test_sigkill_during_gradients_then_rerun_gives_the_same_selection(tiny_run, demo_files, tiny_model_dir, tmp_path):
    """SIGKILL while a shard is written (at a fixed point, not a time): nothing partial counts as
    finished, the rerun keeps the finished shards, and it selects the bytes of an uninterrupted run."""
    reference_dir, _, _ = tiny_run
    config = llama_config(tmp_path / "run", demo_files, tiny_model_dir)  # 3 shards of 16 per checkpoint
    cfg = _write_config(tmp_path / "run.yaml", config)
    for folder in ("warmup", "base_logprobs", "grads/val"):  # same config: tiny_run's, reused by key
        shutil.copytree(reference_dir / folder, tmp_path / "run" / folder)
    log = tmp_path / "child.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", STOP_IN_THIRD_SHARD, str(cfg)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 900)  # a safety net against a hang only
        assert ready and proc.stdout.readline() == "stopped\n", log.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    shards = tmp_path / "run/grads/train/epoch-1"
    manifest = json.loads((tmp_path / "run/grads/train" / MANIFEST).read_text())
    assert manifest["complete"] is False  # nothing partial looks finished
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.npy")}
    assert len(kept) == 2 and list(shards.glob(".shard-*/shard-*.npy"))  # the third is only under its temporary name
    for stage in ("train-grads", "score", "select"):  # the same commands again
        assert main([stage, str(cfg)]) == 0
    assert all(shards.joinpath(n).stat().st_mtime_ns == t for n, t in kept.items())  # finished shards were reused
    assert len(list(shards.glob("shard-*.npy"))) == 3
    # same seed, same inputs: the uninterrupted run in another folder selected the same bytes
    assert (tmp_path / "run/selection/selected.jsonl").read_bytes() == (reference_dir / "selection/selected.jsonl").read_bytes()


GOOD_ROW = {"dataset": "d", "id": "d_0", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
HOSTILE_POOLS = {
    "malformed JSON": (b'{"messages": [\n', "line 1", "malformed JSON"),
    "missing field": (json.dumps({"id": "x"}).encode() + b"\n", "field 'messages'", "missing field"),
    "wrong type": (json.dumps({"messages": {"role": "user"}}).encode() + b"\n", "field 'messages'", "expected list"),
    "empty response": (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}).encode() + b"\n",
                       "field 'messages[1].content'", "empty text"),
    "non-UTF-8": (json.dumps(GOOD_ROW).encode() + b"\n" + b'{"messages": "\xc3\x28"}\n', "line 2", "not valid UTF-8"),
    "duplicate ids": ((json.dumps(GOOD_ROW) + "\n" + json.dumps(GOOD_ROW) + "\n").encode(), "line 2, field 'id'", "duplicate id"),
    "over-long prompt": (json.dumps({"messages": [{"role": "user", "content": "word " * 500}, {"role": "assistant", "content": "a"}]}).encode() + b"\n",
                         "line 1, field 'messages'", "max_length"),
}


@pytest.mark.parametrize("case", list(HOSTILE_POOLS))
def test_hostile_pool_fails_cleanly_and_keeps_earlier_results(case, tiny_run, tmp_path, capsys):
    run_dir, config, _ = tiny_run
    content, where, message = HOSTILE_POOLS[case]
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(content)
    bad = dataclasses.replace(config, data=dataclasses.replace(config.data, pool=[str(pool)]))
    before = _manifests(run_dir)
    assert main(["run", str(_write_config(tmp_path / "bad.yaml", bad))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rose: error: ") and str(pool) in err and where in err and message in err, err
    assert _manifests(run_dir) == before  # the finished run in that folder is untouched


def _run_with(config, tmp_path, capsys, **changes) -> str:
    sections = {}
    for key, value in changes.items():
        section, field = key.split("__")
        sections.setdefault(section, {})[field] = value
    for section, fields in sections.items():
        config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **fields)})
    assert main(["run", str(_write_config(tmp_path / "bad.yaml", config))]) == 2
    return capsys.readouterr().err


def test_other_hostile_inputs(tiny_run, tmp_path, capsys):
    run_dir, config, _ = tiny_run
    before = _manifests(run_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    val = dataclasses.replace(config.data.validation, paths=[str(empty)])
    assert "no preference pairs found" in _run_with(config, tmp_path, capsys, data__validation=val)
    assert "model path not found" in _run_with(config, tmp_path, capsys, model__name=str(tmp_path / "no/such/model"))
    cut = tmp_path / "cut" / "model.gguf"
    cut.parent.mkdir()
    cut.write_bytes(Path(resolve_model("smollm2-135m-instruct")).joinpath("model.safetensors").read_bytes()[:100_000])
    assert "cannot read GGUF file" in _run_with(config, tmp_path, capsys, model__name=str(cut))
    other = dataclasses.replace(config, select=dataclasses.replace(config.select, fraction=0.5))  # same run_dir
    assert main(["finetune", str(_write_config(tmp_path / "other.yaml", other))]) == 2  # its selection is not made yet
    err = capsys.readouterr().err
    assert "stage 'select' has not finished for this config" in err and "select.fraction: 0.125 -> 0.5" in err, err
    cfg = tmp_path / "fraction.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'x'}\nselect: {{fraction: 1.5}}\n")
    assert main(["run", str(cfg)]) == 2 and "select.fraction must be a finite number in (0, 1]" in capsys.readouterr().err
    assert _manifests(run_dir) == before


def test_no_pickle_loading_in_the_package():
    source = "\n".join(p.read_text() for p in Path(__file__).parents[1].joinpath("src/rose").rglob("*.py"))
    assert "torch.load(" not in source and "pickle" not in source and "allow_pickle=True" not in source
