"""`rose compare` end to end on the tiny demo task: every method, the sweeps, shared stages, the report."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from conftest import tiny_config

from rose import compare
from rose.cli import main
from rose.config import load_config
from rose.demo import write_demo_data
from rose.store import StageBusy, folder_lock


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    files = write_demo_data(root / "data", per_skill=6, shots=4, heldout=8, tests=4)
    two_shots = root / "data" / "val2.jsonl"
    two_shots.write_text("".join(files["validation"].read_text().splitlines(keepends=True)[:2]))
    config = tiny_config(root / "run", files)
    config_file = root / "compare.yaml"
    body = json.loads(json.dumps(__import__("dataclasses").asdict(config)))
    body["compare"] = {"methods": ["rose", "less", "random", "bm25", "embedding", "full"], "random_seeds": [0, 1],
                       "budgets": [0.125, 0.25], "budget_methods": ["rose", "random"],
                       "shots": {"2": [str(two_shots)], "4": [str(files["validation"])]}, "shot_methods": ["rose"],
                       "results_json": str(root / "results" / "demo.json")}
    config_file.write_text(json.dumps(body))  # JSON is YAML
    assert main(["compare", str(config_file)]) == 0
    return root


def test_every_variant_is_evaluated_and_reported(compared):
    results = json.loads((compared / "run/compare/results.json").read_text())
    main_methods = sorted(r["method"] for r in results.values() if r["group"] == "main")
    assert main_methods == ["bm25", "embedding", "full", "less", "random", "random", "rose"]
    assert {r["fraction"] for r in results.values() if r["group"] == "budget"} == {0.25}  # 0.125 is the main budget
    assert sorted(r["shots"] for r in results.values() if r["group"] == "shots") == ["2", "4"]
    n_pool = 48
    for name, r in results.items():
        assert 0 <= r["heldout_pref_acc"] <= 1 and r["val_dpo_loss"] > 0 and r["golden_nll"] > 0, name
        assert r["n_selected"] == (n_pool if r["method"] == "full" else round(r["fraction"] * n_pool))
    report = (compared / "run/compare/report.md").read_text()
    assert "| random | 6 |" in report and "±" in report  # two random seeds give a spread
    for image in ("accuracy.png", "budget.png", "shots.png", "dpo_vs_acc.png"):
        assert (compared / "run/compare" / image).stat().st_size > 1000
    summary = json.loads((compared / "results/demo.json").read_text())["methods"]
    assert {"heldout_pref_acc", "reward_margin", "golden_nll", "n_selected"} <= set(summary["rose"])
    assert "heldout_pref_acc_std" in summary["random"]


def test_stages_are_shared_by_key_and_a_rerun_does_nothing(compared):
    run = compared / "run"
    warmups = list((run / "cache").glob("warmup-*"))
    assert len(warmups) == 1  # ROSE, LESS, the budget and the shot variants share one warm-up
    assert len(list((run / "cache").glob("train-grads-*"))) == 1
    assert len(list((run / "cache").glob("reference-*"))) == 2  # one per validation set (validation DPO loss)
    rose = run / "variants/rose-p0.125"
    assert (rose / "warmup").is_symlink() and (run / "variants/less-p0.125/warmup").resolve() == (rose / "warmup").resolve()
    # the 4-shot sweep point uses the main validation set: same keys, so it reused the main ROSE folders
    assert (run / "variants/rose-p0.125-4shot/eval").resolve() == (rose / "eval").resolve()
    before = (run / "compare/results.json").stat().st_mtime_ns
    assert main(["compare", str(compared / "compare.yaml")]) == 0
    assert (run / "compare/results.json").stat().st_mtime_ns == before


def test_report_only_rewrites_the_report_from_results_json(compared):
    """As after copying results.json back from a GPU machine: report, plots and summary come back
    from the results alone, and no variant runs (results.json is left as it was)."""
    out = compared / "run/compare"
    report, summary = (out / "report.md").read_text(), (compared / "results/demo.json").read_text()
    for f in [out / "report.md", out / "budget.png", compared / "results/demo.json"]:
        f.unlink()
    before = (out / "results.json").stat().st_mtime_ns
    assert main(["compare", str(compared / "compare.yaml"), "--report-only"]) == 0
    assert (out / "report.md").read_text() == report and (compared / "results/demo.json").read_text() == summary
    assert (out / "budget.png").stat().st_size > 1000 and (out / "results.json").stat().st_mtime_ns == before


def test_report_only_without_results_is_a_clear_error(compared, tmp_path, capsys):
    assert main(["compare", str(compared / "compare.yaml"), f"run_dir={tmp_path}", "--report-only"]) == 2
    assert "no results to report" in capsys.readouterr().err


def test_a_worker_steps_aside_while_another_process_holds_a_stage(compared, monkeypatch, caplog):
    """A second worker on the same comparison skips a variant whose stage is held, then finishes it."""
    monkeypatch.setattr(compare, "POLL_SECONDS", 0.2)
    results_file = compared / "run/compare/results.json"
    results = json.loads(results_file.read_text())
    held = "random-seed1-p0.125"
    del results[held]
    results_file.write_text(json.dumps(results))
    eval_folder = (compared / "run/variants" / held / "eval").resolve()
    locked, release = threading.Event(), threading.Event()

    def other_worker() -> None:
        with folder_lock(eval_folder):
            locked.set()
            release.wait(timeout=60)

    holder = threading.Thread(target=other_worker)
    holder.start()
    locked.wait(timeout=10)
    threading.Timer(1.5, release.set).start()
    with caplog.at_level(logging.INFO, logger="rose"):
        final = compare.run_compare(load_config(compared / "compare.yaml"))
    holder.join()
    assert f"compare: {held} waits" in caplog.text
    assert list(final)[-1] == held and final[held]["heldout_pref_acc"] == results_before(compared, held)


def results_before(compared, name: str) -> float:
    """The variant's accuracy as its (shared, finished) evaluation folder recorded it."""
    return json.loads((compared / "run/variants" / name / "eval/metrics.json").read_text())["heldout_pref_acc"]


def test_a_held_folder_lock_raises_stage_busy_without_waiting(tmp_path):
    with folder_lock(tmp_path / "stage"):
        with pytest.raises(StageBusy):
            with folder_lock(tmp_path / "stage", wait=False):
                pass
    with folder_lock(tmp_path / "stage", wait=False):  # released: free again
        pass


def test_shared_only_computes_the_warmup_pool_gradients_and_full_fine_tune_and_nothing_else(tmp_path, demo_files):
    config = tiny_config(tmp_path / "run", demo_files, **{"warmup.epochs": 1})
    config_file = tmp_path / "compare.yaml"
    body = json.loads(json.dumps(__import__("dataclasses").asdict(config)))
    body["compare"] = {"methods": ["random", "rose", "less", "full"], "budgets": [], "shots": {}}
    config_file.write_text(json.dumps(body))
    assert main(["compare", "--shared-only", str(config_file)]) == 0
    manifests = (tmp_path / "run/cache").glob("*/manifest.json")
    done = {m.parent.name.rsplit("-", 1)[0] for m in manifests if json.loads(m.read_text()).get("complete")}
    assert done == {"warmup", "val-grads", "train-grads", "score", "select", "finetune"}
    assert not (tmp_path / "run/compare/results.json").exists()
