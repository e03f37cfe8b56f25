"""The Python API: `import rose` stays light, `rose.select` on in-memory data runs the selection
stages through the pipeline, returns the top scores and the pool's own rows, and resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from conftest import tiny_config, tiny_llama

import rose
from rose.stages import STAGES
from rose.store import MANIFEST, read_json


def test_import_rose_loads_no_torch():
    """The CLI reads and checks a config before torch loads; so does `rose.select` until a run starts."""
    code = ("import sys, rose; rose.select, rose.Selection, rose.selection_config, rose.load_config; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_select_in_memory_data_returns_the_top_scores_and_reuses_finished_stages(tmp_path, demo_files, tokenizer):
    """A list of dicts as the pool, a Dataset as the target, a tiny random Llama with SmolLM2's
    tokenizer as a local model folder (what is checked here is the API, not what a model knows)."""
    import datasets

    pool = [json.loads(line) for line in demo_files["pool"].read_text().splitlines()]
    target = datasets.Dataset.from_list([json.loads(line) for line in demo_files["validation"].read_text().splitlines()])
    model = tmp_path / "tiny-llama"
    tiny_llama(len(tokenizer)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    config = tiny_config(tmp_path / "unused", demo_files)  # the tiny recipe; its held-out and test files stay
    run_dir = tmp_path / "run"

    selection = rose.select(pool, target, model=str(model), fraction=0.125, run_dir=run_dir, config=config)

    assert selection.run_dir == run_dir and selection.method == "rose"
    assert selection.ids == [row["id"] for row in pool] and selection.scores.shape == (len(pool),)
    k = round(0.125 * len(pool))
    assert len(selection.indices) == k
    scores = selection.scores
    assert np.all(np.diff(scores[selection.indices]) <= 0)  # best first
    rest = np.setdiff1d(np.arange(len(pool)), selection.indices)
    assert scores[selection.indices].min() >= scores[rest].max()  # the top k scores
    assert selection.rows == [pool[i] for i in selection.indices]
    assert selection.dataset.to_list() == selection.rows
    sft = [json.loads(line) for line in selection.files.sft.read_text().splitlines()]
    assert [row["completion"] for row in sft] == [[pool[i]["messages"][-1]] for i in selection.indices]
    assert all(path.exists() for path in vars(selection.files).values())
    assert not (run_dir / STAGES["finetune"].folder).exists()  # selection only

    stages = rose.selection_stages(rose.api.get_selector("rose"))
    assert stages == ["warmup", "base-logprobs", "val-grads", "train-grads", "score", "select"]
    manifests = {name: run_dir / STAGES[name].folder / MANIFEST for name in stages}
    written = {name: (path.stat().st_mtime_ns, read_json(path)["seconds"]) for name, path in manifests.items()}

    again = rose.select(pool, target, model=str(model), fraction=0.125, run_dir=run_dir, config=config)

    assert {name: (path.stat().st_mtime_ns, read_json(path)["seconds"]) for name, path in manifests.items()} == written
    assert np.array_equal(again.scores, selection.scores) and np.array_equal(again.indices, selection.indices)
    assert len(list((run_dir / "inputs").iterdir())) == 2  # one folder per distinct input: the pool and the target


def test_selection_config_writes_rows_once_by_content_and_keeps_paths(tmp_path, demo_files):
    import datasets
    import pytest

    from rose.errors import ConfigError, RunDirError

    rows = [{"prompt": "q", "completion": "a"}, {"prompt": "q2", "completion": "a2"}]
    rose_format = {"q": {"responses": ["a", "b"], "pairs": [[0, 1]], "sft_target": "a", "rejected_target": "b"}}
    config = rose.selection_config(rows, rose_format, run_dir=tmp_path / "run", test=[str(demo_files["test"])],
                                   method="bm25", lora={"r": 2})
    (pool,), (validation,) = config.data.pool, config.data.validation.paths
    assert [json.loads(line) for line in open(pool)] == rows and pool.endswith("/pool.jsonl")
    assert json.load(open(validation)) == rose_format and validation.endswith("/validation.json")
    assert config.data.test == [str(demo_files["test"])] and config.select.method == "bm25" and config.lora.r == 2
    again = rose.selection_config(datasets.Dataset.from_list(rows), rose_format, run_dir=tmp_path / "run")
    assert again.data.pool == [pool]  # the same rows, the same file
    with pytest.raises(ConfigError, match="pass one"):
        rose.selection_config(datasets.DatasetDict(train=datasets.Dataset.from_list(rows)), rose_format, run_dir=tmp_path / "run")
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError):
        rose.selection_config(rows, rose_format, run_dir=tmp_path / "file")
