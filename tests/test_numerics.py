"""Numerical failures are loud (`rose.numerics`): a diverged warm-up or fine-tune, NaN or all-zero
gradient features and NaN scores stop the stage that meets them with one `rose: error:` line and
exit 2, before its manifest is written; `rose compare` records such a variant as failed and goes
on; `rose.select` raises. Everything runs on a tiny random Llama (`conftest.tiny_model_dir`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import llama_config

import rose
from rose import numerics
from rose.cli import main
from rose.errors import NumericalError
from rose.pipeline import run_stages
from rose.selectors import SELECTORS, Scores
from rose.stages import STAGES
from rose.store import MANIFEST, read_json

pytestmark = pytest.mark.usefixtures("one_thread")
SELECTION_STAGES = ["warmup", "base-logprobs", "val-grads", "train-grads", "score", "select"]


def _config_file(tmp_path, config) -> str:
    file = tmp_path / "run.yaml"
    file.write_text(json.dumps(dataclasses.asdict(config)))  # JSON is YAML
    return str(file)


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("rose: error:")]


def _complete(folder) -> bool:
    return (folder / MANIFEST).is_file() and read_json(folder / MANIFEST)["complete"]


# ----------------------------------------------------------------------------- training


def test_a_diverging_warmup_stops_the_run_before_any_selection(tmp_path, demo_files, tiny_model_dir, capsys):
    """The issue's run: warmup.lr=1e6 makes the loss NaN within the first epoch; the run stops at
    the warm-up with one error line, exit 2, no selection; with a sane lr the same run_dir works."""
    run_dir = tmp_path / "run"
    config_file = _config_file(tmp_path, llama_config(run_dir, demo_files, tiny_model_dir, **{"warmup.lr": 1e6, "warmup.batch_size": 1}))
    assert main(["-q", "run", config_file]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("rose: error: warmup: the training loss is nan at epoch 1, step ")
    assert "warmup.lr=1e+06 is likely too high" in line
    assert not _complete(run_dir / "warmup") and not list(run_dir.rglob("selection.json"))
    assert not list((run_dir / "warmup").glob("epoch-*"))  # no checkpoint of the diverged weights
    assert main(["-q", "warmup", config_file, "warmup.lr=1e-3"]) == 0  # another key: a folder of its own
    assert _complete(run_dir / "warmup")


def test_a_diverging_finetune_stops_before_evaluation_and_keeps_the_selection(tmp_path, demo_files, tiny_model_dir, capsys):
    run_dir = tmp_path / "run"
    config = llama_config(run_dir, demo_files, tiny_model_dir, **{"select.method": "random", "finetune.lr": 1e6})
    assert main(["-q", "run", _config_file(tmp_path, config)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("rose: error: finetune: ") and "finetune.lr=1e+06 is likely too high" in line
    assert "epoch 1" in line
    assert _complete(run_dir / "selection") and (run_dir / "selection/selected.jsonl").is_file()
    assert not _complete(run_dir / "finetune") and not list(run_dir.rglob("metrics.json"))


def test_non_finite_weights_are_not_saved():
    weights = {"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}
    with pytest.raises(NumericalError, match=r"finetune: 1 LoRA weight tensors are not finite after epoch 2, global step 7 "
                                             r"\(e.g. b\).*finetune.lr=0.1 .*or the bfloat16 forward pass overflowed"):
        numerics.check_weights(weights, "finetune", 2, 7, 0.1, "bfloat16")
    numerics.check_weights({"a": torch.ones(2)}, "finetune", 2, 7, 0.1, "bfloat16")


# ----------------------------------------------------------------------------- gradient features and scores


@pytest.fixture(scope="module")
def selected_run(tmp_path_factory, tiny_run):
    """`tiny_run`'s stages through `select` (stage folders in place, the same config), for the tests
    to copy and break."""
    run_dir = tmp_path_factory.mktemp("numerics") / "run"
    for name in SELECTION_STAGES:
        shutil.copytree(tiny_run[0] / STAGES[name].folder, run_dir / STAGES[name].folder)
    return run_dir


@pytest.fixture
def broken(selected_run, tmp_path, demo_files, tiny_model_dir):
    """A copy of `selected_run` to break: (run_dir, config, pool ids)."""
    run_dir = tmp_path / "run"
    shutil.copytree(selected_run, run_dir)
    return run_dir, llama_config(run_dir, demo_files, tiny_model_dir), read_json(run_dir / "scores/scores.json")["ids"]


def _write_nan(file, row: int) -> None:
    array = np.load(file)
    array[row, 0] = np.nan
    np.save(file, array)


def _redo(run_dir, *folders: str) -> None:
    """Forget that these stages finished, so the next run redoes them from what is on disk."""
    for folder in folders:
        (run_dir / folder / MANIFEST).unlink()


def test_nan_in_pool_features_stops_train_grads_and_score_naming_the_example(broken):
    run_dir, config, ids = broken
    _write_nan(next((run_dir / "grads/train/epoch-2").glob("shard-000000016-*.npy")), 3)  # pool row 19
    _redo(run_dir, "scores")
    with pytest.raises(NumericalError, match=rf"^score: 1 of 48 pool examples have NaN/inf .*'{ids[19]}' \(NaN/inf at epoch-2\); "
                                             r"at most 0 may be dropped"):
        run_stages(config, ["score"])
    assert not _complete(run_dir / "scores")
    _redo(run_dir, "grads/train")  # the stage that wrote the shard checks it too (finished shards are kept, not redone)
    with pytest.raises(NumericalError, match=rf"^train-grads: 1 of 48 pool examples .*'{ids[19]}' \(NaN/inf at epoch-2\)"):
        run_stages(config, ["train-grads"])
    assert not _complete(run_dir / "grads/train")


def test_nan_in_validation_features_stops_score_naming_the_pair(broken):
    run_dir, config, _ = broken
    pairs = read_json(run_dir / "grads/val" / MANIFEST)["ids"]
    _write_nan(run_dir / "grads/val/epoch-1/grads.npy", 2)
    _redo(run_dir, "scores")
    with pytest.raises(NumericalError, match=rf"^score: 1 of 4 validation pairs have NaN/inf .* at checkpoint epoch-1: "
                                             rf"'{pairs[2]}' \(NaN/inf\)"):
        run_stages(config, ["score"])


def test_a_few_bad_pool_examples_are_dropped_with_a_warning_and_more_are_an_error(caplog):
    """Of 300 examples 3 may be dropped (1%); a NaN row and an all-zero row in different checkpoints
    are dropped and named; a fourth bad row is an error."""
    ids = [f"ex{i}" for i in range(300)]
    first, second = np.ones((300, 4), np.float16), np.ones((300, 4), np.float16)
    first[7, 1], second[150] = np.inf, 0
    with caplog.at_level(logging.WARNING, logger="rose"):
        dropped = numerics.pool_rows_to_drop({"epoch-1": [first[:100], first[100:]], "epoch-2": [second]}, ids, "score")
    assert dropped == [7, 150]
    assert "score: dropping 2 of 300 pool examples" in caplog.text
    assert "'ex7' (NaN/inf at epoch-1), 'ex150' (all zero at epoch-2)" in caplog.text
    second[[20, 30]] = np.nan
    with pytest.raises(NumericalError, match="4 of 300 pool examples .* at most 3 may be dropped"):
        numerics.pool_rows_to_drop({"epoch-1": [first], "epoch-2": [second]}, ids, "score")


def test_non_finite_scores_of_a_selection_method_stop_the_score_stage(tmp_path, demo_files, tiny_model_dir, monkeypatch):
    def nan_scores(run) -> Scores:
        scores = np.arange(len(run.pool.records), dtype=np.float64)
        scores[5] = np.nan
        return Scores(scores, scores[:, None], ["all"])

    monkeypatch.setitem(SELECTORS, "random", dataclasses.replace(SELECTORS["random"], score=nan_scores))
    config = llama_config(tmp_path / "run", demo_files, tiny_model_dir, **{"select.method": "random"})
    with pytest.raises(NumericalError, match=r"^score: 1 of 48 pool examples have non-finite scores by 'random': '[^']+' \(nan\)"):
        run_stages(config, ["score"])
    assert not _complete(tmp_path / "run/scores") and not (tmp_path / "run/scores/scores.npy").exists()


def test_select_refuses_nan_scores_and_never_selects_a_dropped_example(broken):
    run_dir, config, ids = broken
    scores_file = run_dir / "scores/scores.npy"
    scores = np.load(scores_file)
    order = np.argsort(-scores)
    scores[order[[0, *range(5, 48)]]] = -np.inf  # dropped by the score stage: all but 4 of the 6 best
    np.save(scores_file, scores)
    _redo(run_dir, "selection")
    run_stages(config, ["select"])
    selected = [row["id"] for row in read_json(run_dir / "selection/selection.json")["selected"]]
    assert selected == [ids[i] for i in order[1:5]]  # 6 asked for, 4 left to select from

    scores[9] = np.nan  # written by hand, or by a rose without these checks
    np.save(scores_file, scores)
    _redo(run_dir, "selection")
    with pytest.raises(NumericalError, match=rf"^select: .*scores.npy holds NaN or \+inf scores for 1 of 48 pool examples: '{ids[9]}'"):
        run_stages(config, ["select"])
    assert not _complete(run_dir / "selection")
    with pytest.raises(NumericalError, match="scores.npy holds NaN"):  # the API raises the same, and returns nothing
        rose.select(config.data.pool, config.data.validation.paths, run_dir=run_dir, config=config)


def test_a_selection_made_from_nan_scores_is_not_fine_tuned(broken):
    """A selection.json written from NaN scores (by a rose without these checks) is refused by the stages that read it."""
    run_dir, config, _ = broken
    selection = read_json(run_dir / "selection/selection.json")
    selection["selected"][0]["score"] = float("nan")
    (run_dir / "selection/selection.json").write_text(json.dumps(selection))
    with pytest.raises(NumericalError, match=r"selection.json selects 1 examples by non-finite scores"):
        run_stages(config, ["finetune"])


# ----------------------------------------------------------------------------- rose compare


def test_compare_records_a_variant_stopped_by_its_input_as_failed_and_finishes_the_others(tmp_path, demo_files, tiny_model_dir, capsys):
    """A few-shot set whose prompt is too long for the model stops only that variant (before, every
    worker of a study exited on it): the error is in results.json and the report, the rest finish."""
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "word " * 3000, "chosen": "yes", "rejected": "no"}) + "\n")
    config = llama_config(tmp_path / "run", demo_files, tiny_model_dir, **{
        "compare.methods": "[random, less]", "compare.random_seeds": "[0]", "compare.budgets": "[]",
        "compare.shots": f'{{"1": ["{long}"]}}', "compare.shot_methods": "[less]"})
    assert main(["-q", "compare", _config_file(tmp_path, config)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert line.startswith("rose: error: compare: 1 of 3 variants failed (less-p0.125-1shot)")
    results = read_json(tmp_path / "run/compare/results.json")
    assert "long.jsonl" in results["less-p0.125-1shot"]["failed"] and "max_length" in results["less-p0.125-1shot"]["failed"]
    assert "heldout_pref_acc" in results["less-p0.125"] and "heldout_pref_acc" in results["random-seed0-p0.125"]


def test_compare_reports_a_diverging_variant_as_failed_and_finishes_the_others(tmp_path, demo_files, tiny_model_dir, capsys):
    config = llama_config(tmp_path / "run", demo_files, tiny_model_dir, **{
        "warmup.lr": 1e6, "compare.methods": "[random, rose]", "compare.random_seeds": "[0]", "compare.budgets": "[]",
        "compare.shots": "{}"})
    config_file = _config_file(tmp_path, config)
    assert main(["-q", "compare", config_file]) == 2
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert line.startswith("rose: error: compare: 1 of 2 variants failed (rose-p0.125)")
    results = read_json(tmp_path / "run/compare/results.json")
    assert results["rose-p0.125"]["failed"].startswith("warmup: ") and "warmup.lr=1e+06 is likely too high" in results["rose-p0.125"]["failed"]
    assert "heldout_pref_acc" in results["random-seed0-p0.125"]
    report = (tmp_path / "run/compare/report.md").read_text()
    assert "| random | 6 |" in report and "## Failed variants" in report and "- rose-p0.125: warmup: " in report
    assert main(["-q", "compare", config_file, "--report-only"]) == 0
    assert (tmp_path / "run/compare/report.md").read_text() == report
