"""Stage order, the run record (config.yaml), and the run summary (summary.json, report.md)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import yaml

from . import __version__
from .config import RunConfig, to_dict
from .context import FOLDERS, Run
from .distributed import Dist
from .inputs import RunInputs, check_run_dir
from .registry import stages_for
from .report import render_report
from .stages import STAGES
from .store import MANIFEST, atomic_write_text, folder_lock, read_json, write_json
from .support import check_model_support

log = logging.getLogger("rose")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def record_config(run: Run) -> None:
    """Write the resolved config (with versions) into the run dir, so a run can be repeated exactly."""
    body = {"rose_version": __version__, "git_sha": _git_sha(), **to_dict(run.config)}
    atomic_write_text(run.dir / "config.yaml", yaml.safe_dump(body, sort_keys=False))


def preflight(run: Run, stages: Sequence[str]) -> None:
    """Read and check every input the stages need, then check the run directory, before writing anything.

    A malformed file or a folder written by another config stops the run here, so nothing is left
    half-written and an hour of warm-up is not spent before a broken held-out file is noticed.
    The files are parsed first (no model needed), then tokenised, then the model is loaded.
    """
    check_run_dir(run.config.run_dir)
    run.inputs.check(stages)
    tokenised = {"pool": "_pool", "validation": "validation_set", "heldout": "heldout", "tests": "tests"}
    for name in run.inputs.needed(stages):
        getattr(run, tokenised[name])  # reading a lazy property of the Run tokenises that input
    if set(stages) - {"score", "select"} or run.config.select.method == "embedding":
        check_model_support(run.model, run.config.model.name, run.config.model.max_length)  # loads it; refuses a family it gets wrong
    for name in stages:
        run.stage(name).is_done()  # raises if another config wrote this stage's folder


def run_stages(config: RunConfig, names: Sequence[str] | None = None, dist: Dist | None = None, base: Run | None = None,
               wait: bool = True, inputs: RunInputs | None = None) -> Run:
    """Run the named stages (default: all that the selection method needs) in pipeline order;
    completed stages are skipped. `base`: an earlier Run whose loaded model and data to reuse;
    `inputs`: records already read and checked for this config (by the CLI, before torch loaded).

    The main process holds each stage folder's lock while the stage runs, so processes sharing
    folders never write one at once; with wait=False a stage held elsewhere raises StageBusy."""
    run = base.derive(config) if base is not None else Run(config, dist or Dist.from_env(), inputs)
    wanted = list(names or stages_for(config.select.method))
    unknown = [n for n in wanted if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    preflight(run, wanted)
    if run.dist.is_main:
        run.dir.mkdir(parents=True, exist_ok=True)
        record_config(run)
    for name in STAGES:
        if name in wanted:
            if run.dist.is_main:
                log.info("stage %s", name)
            with folder_lock(run.stage(name).path, wait) if run.dist.is_main else nullcontext():
                STAGES[name](run)
    if run.dist.is_main and names is None:
        summarize(run)
    return run


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall time each completed stage recorded in its manifest."""
    out = {}
    for stage, folder in FOLDERS.items():
        file = Path(run_dir) / folder / MANIFEST
        seconds = read_json(file).get("seconds") if file.is_file() else None
        if seconds is not None:
            out[stage] = round(float(seconds), 1)
    return out


def summarize(run: Run, extra: dict | None = None) -> dict:
    """Collect the evaluation, selection and timings into summary.json and report.md."""
    summary: dict = {"run_dir": str(run.dir), "model": run.config.model.name, "n_pool": len(run.pool)}
    selection = run.dir / "selection" / "selection.json"
    if selection.is_file():
        info = read_json(selection)
        summary.update(n_selected=info["n_selected"], sources=info["sources"])
    metrics = run.dir / "eval" / "metrics.json"
    if metrics.is_file():
        summary.update(read_json(metrics))
    summary["stage_seconds"] = stage_seconds(run.dir)
    summary.update(extra or {})
    write_json(run.dir / "summary.json", summary)
    atomic_write_text(run.dir / "report.md", render_report(summary))
    return summary
