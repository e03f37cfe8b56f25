"""The selector registry: a new method is one file and one registration line; names are checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config

from rose.config import load_config
from rose.errors import ConfigError
from rose.pipeline import run_stages
from rose.selectors import SELECTORS, get_selector
from rose.stages import STAGES, stages_for


def test_a_registered_toy_selector_runs_through_score_and_select(tmp_path, demo_files):
    import toy_selector  # noqa: F401  (registers "longest")

    config = tiny_config(tmp_path / "run", demo_files, **{"select.method": "longest", "select.fraction": 0.25})
    run = run_stages(config, ["score", "select"])
    lengths = np.array([len(e) - e.n_prompt for e in run.pool.encoded])
    chosen = [json.loads(line)["id"] for line in (tmp_path / "run/selection/selected.jsonl").read_text().splitlines()]
    order = np.lexsort((np.arange(len(lengths)), -lengths))  # longest first, ties in pool order
    assert chosen == [run.pool.records[i].id for i in order[: round(0.25 * len(lengths))]]
    assert json.loads((tmp_path / "run/scores/scores.json").read_text())["method"] == "longest"
    assert stages_for(get_selector("longest")) == [n for n, s in STAGES.items() if not s.gradients]


def test_unknown_method_is_a_config_error_that_lists_the_registered_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["select.method=lessss"])
    assert "unknown selection method 'lessss'" in str(e.value) and all(name in str(e.value) for name in ("rose", "less", "bm25"))
    with pytest.raises(ConfigError, match="compare.methods"):
        load_config(None, ["compare.methods=[rose,nope]"])


def test_what_each_builtin_selector_needs_is_declared_on_its_record():
    needs = {name: (s.validation_loss, s.reads_validation, s.needs_model, s.selects_all) for name, s in SELECTORS.items()}
    assert needs["rose"] == ("dpo", True, False, False) and needs["less"] == ("sft", True, False, False)
    assert needs["random"] == (None, False, False, False) and needs["full"] == (None, False, False, True)
    assert needs["bm25"] == (None, True, False, False) and needs["embedding"] == (None, True, True, False)
