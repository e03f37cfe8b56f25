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
from .context import Run
from .distributed import Dist
from .inputs import RunInputs, check_run_dir
from .report import render_report
from .stages import STAGES, execute, inputs_read_by, stages_for
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
    The files are parsed first (no model needed), then tokenised, then the model is loaded and
    held to its own forward pass.
    """
    check_run_dir(run.config.run_dir)
    names = inputs_read_by(list(stages), run.selector)
    run.inputs.check(names)
    for name in names:
        getattr(run, name)  # tokenises that input
    if any(STAGES[name].loads_model_for(run.selector) for name in stages):
        check_model_support(run.model.model, run.config.model.name, run.config.model.max_length)  # refuses a family rose gets wrong
    for name in stages:
        run.stage_dir(name).is_done()  # raises if another config wrote this stage's folder


def run_stages(config: RunConfig, names: Sequence[str] | None = None, dist: Dist | None = None, base: Run | None = None,
               wait: bool = True, inputs: RunInputs | None = None) -> Run:
    """Run the named stages (default: all that the selection method needs) in pipeline order;
    completed stages are skipped. `base`: an earlier Run whose loaded model and data to reuse;
    `inputs`: records already read and checked for this config (by the CLI, before torch loaded).

    The main process holds each stage folder's lock while the stage runs, so processes sharing
    folders never write one at once; with wait=False a stage held elsewhere raises StageBusy."""
    run = base.with_config(config) if base is not None else Run(config, dist or Dist.from_env(), inputs)
    wanted = list(names or stages_for(run.selector))
    unknown = [n for n in wanted if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    preflight(run, wanted)
    if run.dist.is_main:
        run.dir.mkdir(parents=True, exist_ok=True)
        record_config(run)
    for name, stage in STAGES.items():
        if name in wanted:
            if run.dist.is_main:
                log.info("stage %s", name)
            with folder_lock(run.stage_dir(name).path, wait) if run.dist.is_main else nullcontext():
                execute(stage, run)
    if run.dist.is_main and names is None:
        summarize(run)
    return run


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall time each completed stage recorded in its manifest."""
    out = {}
    for name, stage in STAGES.items():
        file = Path(run_dir) / stage.folder / MANIFEST
        seconds = read_json(file).get("seconds") if file.is_file() else None
        if seconds is not None:
            out[name] = round(float(seconds), 1)
    return out


def summarize(run: Run, extra: dict | None = None) -> dict:
    """Collect the evaluation, selection and timings into summary.json and report.md."""
    summary: dict = {"run_dir": str(run.dir), "model": run.config.model.name, "n_pool": len(run.pool.records)}
    selection = run.dir / STAGES["select"].folder / "selection.json"
    if selection.is_file():
        info = read_json(selection)
        summary.update(n_selected=info["n_selected"], sources=info["sources"])
    metrics = run.dir / STAGES["evaluate"].folder / "metrics.json"
    if metrics.is_file():
        summary.update(read_json(metrics))
    summary["stage_seconds"] = stage_seconds(run.dir)
    summary.update(extra or {})
    write_json(run.dir / "summary.json", summary)
    atomic_write_text(run.dir / "report.md", render_report(summary))
    return summary
