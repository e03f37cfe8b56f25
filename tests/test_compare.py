"""`rose compare` end to end on the tiny demo task: every method, the sweeps, shared stages, the report."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import statistics
import threading
import types
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from rose import compare
from rose.cli import main
from rose.config import load_config
from rose.context import Run
from rose.report import compare_plots, method_summary, render_compare
from rose.stages import STAGES
from rose.stats import paired_difference
from rose.store import MANIFEST, StageBusy, folder_lock, read_json

pytestmark = pytest.mark.xdist_group("compare")  # one worker runs the module, so its module fixture runs once

N_POOL = 48  # the demo pool of conftest.demo_files
METRICS = ("heldout_pref_acc", "reward_margin", "length_norm_pref_acc", "golden_nll", "val_dpo_loss")
VARIANTS = {  # name -> group: six methods (two random seeds), one extra budget, one extra few-shot point
    "rose-p0.125": "main", "less-p0.125": "main", "random-seed0-p0.125": "main", "random-seed1-p0.125": "main",
    "bm25-p0.125": "main", "embedding-p0.125": "main", "full": "main", "rose-p0.0625": "budget",
    "rose-p0.125-1shot": "shots", "rose-p0.125-4shot": "shots",
}


@dataclasses.dataclass(frozen=True)
class Comparison:
    root: Path
    config_file: Path
    seeded: dict[str, int]  # cache folder name -> manifest mtime, as copied from tiny_run
    after_shared_only: set[str]  # complete cache folders after `rose compare --shared-only`
    results_after_shared_only: bool  # whether results.json existed then


def _complete(cache: Path) -> dict[str, int]:
    """Cache folders whose manifest says complete -> that manifest's mtime."""
    return {m.parent.name: m.stat().st_mtime_ns for m in cache.glob(f"*/{MANIFEST}") if read_json(m).get("complete")}


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_run, demo_files) -> Comparison:
    """Every method, a budget sweep and a few-shot sweep that add one variant each, on the tiny demo task.

    `tiny_run` has the data and config of the main ROSE variant, so its stage folders are copied
    into the cache under its keys: the comparison computes only what that run did not. First
    `--shared-only` runs (it adds the full-pool fine-tune), then the comparison itself.
    """
    run_dir, config, run = tiny_run
    root = tmp_path_factory.mktemp("compare")
    one_shot = root / "val1.jsonl"
    one_shot.write_text(demo_files["validation"].read_text().splitlines(keepends=True)[0])
    body = json.loads(json.dumps(dataclasses.asdict(config)))
    body["run_dir"] = str(root / "run")
    body["compare"] = {"methods": ["rose", "less", "random", "bm25", "embedding", "full"], "random_seeds": [0, 1],
                       "budgets": [0.0625, 0.125], "budget_methods": ["rose"],
                       "shots": {"1": [str(one_shot)], "4": [str(demo_files["validation"])]}, "shot_methods": ["rose"],
                       "results_json": str(root / "results" / "demo.json")}
    config_file = root / "compare.yaml"
    config_file.write_text(json.dumps(body))  # JSON is YAML
    cache = root / "run" / "cache"
    for name, stage in STAGES.items():
        shutil.copytree(run_dir / stage.folder, cache / f"{name}-{run.keys[name]}")
    seeded = _complete(cache)
    assert main(["compare", "--shared-only", str(config_file)]) == 0
    after_shared_only, results_after_shared_only = set(_complete(cache)), (root / "run/compare/results.json").exists()
    assert main(["compare", str(config_file)]) == 0
    return Comparison(root, config_file, seeded, after_shared_only, results_after_shared_only)


def _variant(compared: Comparison, name: str) -> Path:
    return compared.root / "run" / "variants" / name


def _metrics(compared: Comparison, name: str) -> dict:
    return read_json(_variant(compared, name) / "eval/metrics.json")


def _correct(compared: Comparison, *names: str) -> np.ndarray:
    """[variants, pairs] per-pair held-out correctness, as the variants' evaluations stored it."""
    return np.stack([np.load(_variant(compared, name) / "eval/heldout_correct.npy") for name in names])


RANDOM = ("random-seed0-p0.125", "random-seed1-p0.125")


def _interval(d) -> str:
    return f"{d.difference:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"


def _expected_summary(compared: Comparison) -> dict[str, dict]:
    """Per main method, by hand from the variants' own metrics.json: mean, and std over seeds (ddof=1)."""
    by_method: dict[str, list[dict]] = {}
    for name, group in VARIANTS.items():
        if group == "main":
            by_method.setdefault(name.split("-")[0], []).append(_metrics(compared, name))
    out = {}
    for method, rows in by_method.items():
        out[method] = {m: statistics.mean(r[m] for r in rows) for m in METRICS}
        if len(rows) > 1:
            out[method] |= {f"{m}_std": statistics.stdev(r[m] for r in rows) for m in METRICS}
    return out


def test_every_variant_is_evaluated_and_reported(compared):
    results = read_json(compared.root / "run/compare/results.json")
    assert {name: r["group"] for name, r in results.items()} == VARIANTS  # 0.125 is the main budget: no duplicate
    for name, r in results.items():
        metrics = _metrics(compared, name)
        assert {k: r[k] for k in metrics} == metrics, name  # the variant's own evaluation, unchanged
        selected = (_variant(compared, name) / "selection/selected.jsonl").read_text().splitlines()
        assert r["n_selected"] == len(selected) == (N_POOL if r["method"] == "full" else round(r["fraction"] * N_POOL)), name
    assert results["rose-p0.0625"]["n_selected"] == 3 and results["rose-p0.125-1shot"]["n_selected"] == 6
    seeds = [read_json(_variant(compared, f"random-seed{s}-p0.125") / "selection/selection.json")["selected"] for s in (0, 1)]
    assert seeds[0] != seeds[1]  # two seeds, two selections: the spread below is over different runs

    for name, r in results.items():  # per-pair correctness: stored by the evaluation, carried into results.json
        correct = _correct(compared, name)[0]
        assert r["heldout_correct"] == correct.tolist() and correct.mean() == r["heldout_pref_acc"] and correct.size == 8, name

    expected = _expected_summary(compared)
    summary = read_json(compared.root / "results/demo.json")["methods"]
    assert set(summary) == set(expected)
    for method, values in expected.items():
        got = {k: v for k, v in summary[method].items() if k.removesuffix("_std") in METRICS}
        assert got == pytest.approx(values, rel=1e-12, abs=1e-15), method  # no _std key for a single run
        assert summary[method]["n_runs"] == (2 if method == "random" else 1)
    assert expected["random"]["reward_margin_std"] > 0

    # paired intervals: the stats module on the variants' own per-pair arrays (random's two seeds averaged pair by pair)
    intervals = {"random": {"less": paired_difference(_correct(compared, *RANDOM), _correct(compared, "less-p0.125"))},
                 "rose": {ref: paired_difference(_correct(compared, "rose-p0.125"), _correct(compared, *names))
                          for ref, names in (("random", RANDOM), ("less", ("less-p0.125",)))}}
    for method, refs in intervals.items():
        for ref, d in refs.items():
            assert summary[method][f"acc_minus_{ref}"] == pytest.approx(dataclasses.asdict(d), abs=1e-15), (method, ref)
    assert "acc_minus_random" not in summary["random"] and "acc_minus_less" not in summary["less"]
    report = (compared.root / "run/compare/report.md").read_text().splitlines()
    for method in ("random", "rose"):
        e = expected[method]
        cells = [f"{e[m]:.4f}" + (f" ± {e[m + '_std']:.4f}" if method == "random" else "") for m in METRICS]
        cells += [_interval(intervals[method][ref]) if ref in intervals[method] else "" for ref in ("random", "less")]
        assert f"| {method} | 6 | " + " | ".join(cells) + " |" in report
    for image, size in {"accuracy.png": (420, 720), "budget.png": (420, 720), "shots.png": (420, 720), "dpo_vs_acc.png": (480, 600)}.items():
        assert matplotlib.image.imread(compared.root / "run/compare" / image).shape[:2] == size, image  # decodes, at figsize * dpi


def test_plots_show_the_results(compared, tmp_path, monkeypatch):
    """What each plot draws: read back from the figures compare_plots saves."""
    figures, save = {}, Figure.savefig

    def keep(fig, fname, *args, **kwargs):
        figures[Path(fname).name] = fig
        return save(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    results = read_json(compared.root / "run/compare/results.json")
    assert compare_plots(results, tmp_path, ["rose"], ["rose"]) == ["accuracy.png", "budget.png", "shots.png", "dpo_vs_acc.png"]
    acc = {name: r["heldout_pref_acc"] for name, r in results.items()}
    expected = _expected_summary(compared)

    bars = figures["accuracy.png"].axes[0]
    methods = [t.get_text() for t in bars.get_xticklabels()]
    assert sorted(methods) == sorted(expected)
    assert [p.get_height() for p in bars.patches] == pytest.approx([expected[m]["heldout_pref_acc"] for m in methods])
    container = next(c for c in bars.containers if isinstance(c, BarContainer))
    error_bars = container.errorbar.lines[2][0].get_segments()  # one [[x, low], [x, high]] per bar
    spread = {m: (seg[1][1] - seg[0][1]) / 2 for m, seg in zip(methods, error_bars)}
    assert spread == pytest.approx({m: expected[m].get("heldout_pref_acc_std", 0) for m in methods})

    def lines(name: str) -> dict[str, tuple[list, list]]:
        return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in figures[name].axes[0].lines}

    budget = lines("budget.png")  # percent of the pool; the full pool as a horizontal reference
    assert budget["rose"] == ([6.25, 12.5], pytest.approx([acc["rose-p0.0625"], acc["rose-p0.125"]]))
    assert budget["full pool"][1] == pytest.approx([acc["full"]] * 2)
    shots = lines("shots.png")
    assert shots["rose"] == ([1, 4], pytest.approx([acc["rose-p0.125-1shot"], acc["rose-p0.125-4shot"]]))
    assert shots["random"][1] == pytest.approx([expected["random"]["heldout_pref_acc"]] * 2)
    points = {c.get_label(): sorted(map(tuple, c.get_offsets().tolist())) for c in figures["dpo_vs_acc.png"].axes[0].collections}
    by_method: dict[str, list] = {}
    for r in results.values():
        by_method.setdefault(r["method"], []).append((r["val_dpo_loss"], r["heldout_pref_acc"]))
    assert points == {m: sorted(p) for m, p in by_method.items()}


def test_stages_are_shared_by_key_and_a_rerun_does_nothing(compared):
    run, cache = compared.root / "run", compared.root / "run/cache"
    # nothing tiny_run had computed was computed again: the main ROSE variant is that run, by key
    assert {k: v for k, v in _complete(cache).items() if k in compared.seeded} == compared.seeded
    rose = _variant(compared, "rose-p0.125")
    assert {(rose / stage.folder).resolve().name for stage in STAGES.values()} == set(compared.seeded)
    assert len(list(cache.glob("warmup-*"))) == 1 and len(list(cache.glob("train-grads-*"))) == 1
    assert sum(name.startswith("val-grads-") for name in _complete(cache)) == 3  # ROSE, LESS, ROSE on 1 shot
    assert len(list(cache.glob("base-logprobs-*"))) == 2  # one per validation set
    for name in ("less-p0.125", "rose-p0.0625", "rose-p0.125-1shot"):
        for folder in ("warmup", "grads/train"):
            assert (_variant(compared, name) / folder).resolve() == (rose / folder).resolve(), (name, folder)
    # a smaller budget selects from the same scores; the 4-shot point is the main validation set: the main ROSE run
    assert (_variant(compared, "rose-p0.0625") / "scores").resolve() == (rose / "scores").resolve()
    assert (_variant(compared, "rose-p0.0625") / "selection").resolve() != (rose / "selection").resolve()
    assert (_variant(compared, "rose-p0.125-4shot") / "eval").resolve() == (rose / "eval").resolve()
    before, results = _complete(cache), (run / "compare/results.json").stat().st_mtime_ns
    assert main(["compare", str(compared.config_file)]) == 0
    assert _complete(cache) == before and (run / "compare/results.json").stat().st_mtime_ns == results


def test_shared_only_adds_the_full_pool_fine_tune_and_nothing_else(compared):
    """With the warm-up and pool gradients already in the cache (from tiny_run), `--shared-only`
    computes the full-pool selection and fine-tune, and no other variant, evaluation or result."""
    full = _variant(compared, "full")
    added = {(full / STAGES[name].folder).resolve().name for name in ("score", "select", "finetune")}
    assert compared.after_shared_only == set(compared.seeded) | added
    assert len(added) == 3 and not added & set(compared.seeded)
    assert not compared.results_after_shared_only


def test_report_only_rewrites_the_report_from_results_json(compared):
    """As after copying results.json back from a GPU machine: report, plots and summary come back
    from the results alone, and no variant runs (results.json is left as it was)."""
    out = compared.root / "run/compare"
    summary_file = compared.root / "results/demo.json"
    report, summary = (out / "report.md").read_text(), summary_file.read_text()
    for f in [out / "report.md", out / "budget.png", summary_file]:
        f.unlink()
    before = (out / "results.json").stat().st_mtime_ns
    assert main(["compare", str(compared.config_file), "--report-only"]) == 0
    assert (out / "report.md").read_text() == report and summary_file.read_text() == summary
    assert matplotlib.image.imread(out / "budget.png").shape[:2] == (420, 720)
    assert (out / "results.json").stat().st_mtime_ns == before
    assert main(["compare", str(compared.config_file), "compare.results_json=null", "--report-only"]) == 0
    assert (out / "methods.json").read_text() == summary  # told nowhere else, the results JSON stays under run_dir


def test_report_only_without_results_is_a_clear_error(compared, tmp_path, capsys):
    assert main(["compare", str(compared.config_file), f"run_dir={tmp_path}", "--report-only"]) == 2
    assert "no results to report" in capsys.readouterr().err


def test_a_worker_steps_aside_while_another_process_holds_a_stage(compared, monkeypatch, caplog):
    """A second worker on the same comparison skips a variant whose stage is held, then finishes it.

    No clocks: the holder releases the stage when the worker pauses before looking again (the
    pause itself is replaced), so the worker always meets the lock first and the free stage next."""
    results_file = compared.root / "run/compare/results.json"
    results = read_json(results_file)
    held = "random-seed1-p0.125"
    del results[held]
    results_file.write_text(json.dumps(results))
    locked, release, pauses = threading.Event(), threading.Event(), []

    def other_worker() -> None:  # a lock of its own open file: flock excludes it as it would another process
        with folder_lock(_variant(compared, held).joinpath("eval").resolve()):
            locked.set()
            release.wait(timeout=600)  # a safety net against a hang, never reached when the test passes

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        release.set()
        holder.join()

    holder = threading.Thread(target=other_worker)
    holder.start()
    assert locked.wait(timeout=600)
    monkeypatch.setattr(compare, "time", types.SimpleNamespace(sleep=pause))
    try:
        with caplog.at_level(logging.INFO, logger="rose"):
            final = compare.run_compare(load_config(compared.config_file))
    finally:
        release.set()
        holder.join()
    assert pauses == [compare.POLL_SECONDS]  # held once, then done
    assert f"compare: {held} waits" in caplog.text
    assert list(final)[-1] == held and final[held]["heldout_pref_acc"] == _metrics(compared, held)["heldout_pref_acc"]


def test_a_held_folder_lock_raises_stage_busy_without_waiting(tmp_path):
    with folder_lock(tmp_path / "stage"):
        with pytest.raises(StageBusy):
            with folder_lock(tmp_path / "stage", wait=False):
                pass
    with folder_lock(tmp_path / "stage", wait=False):  # released: free again
        pass


def test_a_second_fine_tune_seed_tunes_the_same_selection_and_joins_the_spread_and_intervals(compared):
    """With compare.finetune_seeds=[0, 1] every method but random gets a second fine-tune of its one
    selection. The fixture's comparison has one seed; here ROSE's second run alone is added (the
    last test, so the others see the comparison as it was) and summarised with the others."""
    config = load_config(compared.config_file, ["compare.finetune_seeds=[0,1]"])
    by_name = {v.name: v for v in compare.variants(config)}
    second_runs = {"rose-p0.125-ft1", "less-p0.125-ft1", "bm25-p0.125-ft1", "embedding-p0.125-ft1", "full-ft1", "rose-p0.0625-ft1",
                   "rose-p0.125-ft1-1shot", "rose-p0.125-ft1-4shot"}  # every sweep point gets its seeds too
    assert set(by_name) == set(VARIANTS) | second_runs  # random varies its selection seed instead
    first, variant = by_name["rose-p0.125"], by_name["rose-p0.125-ft1"]
    assert variant.config == dataclasses.replace(first.config, run_dir=variant.config.run_dir,
                                                 finetune=dataclasses.replace(first.config.finetune, seed=1))
    result, _ = compare.run_variant(variant, compared.root / "run/cache", Run(config))

    one, two = _variant(compared, first.name), _variant(compared, variant.name)
    for name, stage in STAGES.items():  # the same selection, from the same stages; its own fine-tune and evaluation
        assert ((one / stage.folder).resolve() == (two / stage.folder).resolve()) == (name not in ("finetune", "evaluate")), name
    from safetensors.torch import load_file
    weights = [load_file(next((run / "finetune").rglob("adapter_model.safetensors"))) for run in (one, two)]
    assert weights[0].keys() == weights[1].keys() and any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    results = read_json(compared.root / "run/compare/results.json") | {variant.name: result}
    rose = method_summary(results)["rose"]
    runs = [_metrics(compared, first.name), _metrics(compared, variant.name)]
    assert rose["n_runs"] == 2 and runs[0]["reward_margin"] != runs[1]["reward_margin"]
    for m in METRICS:  # two runs: mean (a + b) / 2, sample std |a - b| / sqrt(2)
        a, b = runs[0][m], runs[1][m]
        assert (rose[m], rose[f"{m}_std"]) == pytest.approx(((a + b) / 2, abs(a - b) / 2 ** 0.5), rel=1e-12, abs=1e-15), m
    both = _correct(compared, first.name, variant.name)
    d = paired_difference(both, _correct(compared, *RANDOM))
    assert rose["acc_minus_random"] == pytest.approx(dataclasses.asdict(d), abs=1e-15)
    assert d.difference == pytest.approx(both.mean() - _correct(compared, *RANDOM).mean(), abs=1e-12)
    report = render_compare(results, "t", [], {"budget": ["rose"], "shots": ["rose"]}).splitlines()
    row = next(line for line in report if line.startswith("| rose | 6 | "))
    assert f"{rose['heldout_pref_acc']:.4f} ± {rose['heldout_pref_acc_std']:.4f}" in row and _interval(d) in row
