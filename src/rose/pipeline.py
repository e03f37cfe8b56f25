"""Stage order, the run record (config.yaml), and the run summary (summary.json, report.md)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import yaml

from . import __version__
from .config import RECORDED_KEYS, RunConfig, to_dict
from .context import Run
from .distributed import Dist
from .errors import RunDirError
from .inputs import RunInputs, check_run_dir
from .report import render_report
from .stages import STAGES, execute, inputs_read_by, stages_for
from .store import MANIFEST, atomic_write_text, folder_lock, read_json, write_json
from .support import check_model_support
from .trackers import Trackers

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


def previous_config(run_dir: Path) -> dict:
    """The config the last run in this folder recorded (empty if none)."""
    file = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(file.read_text(encoding="utf-8")) or {}) if file.is_file() else {}


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted config fields whose values differ, as `field: old -> new` lines (`RECORDED_KEYS` left out)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        if not prefix and key in RECORDED_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _changes_hint(run: Run, previous: dict) -> str:
    changes = config_changes(previous, to_dict(run.config)) if previous else []
    return f"; changed since the last run in {run.dir}: " + ", ".join(changes) if changes else ""


def cache_dir(config: RunConfig) -> Path:
    """Where stage folders are kept by key: compare.cache_dir (shared with `rose compare` and other
    tasks) or run_dir/cache."""
    return Path(config.compare.cache_dir) if config.compare.cache_dir else Path(config.run_dir) / "cache"


def _in_place(folder: Path) -> str | None:
    """The key of a stage folder written in place (before stages were kept by key), None if it is
    empty; a folder rose did not write is refused."""
    if (folder / MANIFEST).is_file():
        return read_json(folder / MANIFEST)["key"]
    if any(p.name != ".lock" for p in folder.iterdir()):
        raise RunDirError(f"{folder} holds files but no {MANIFEST}, so rose did not write it; move it away or choose another run_dir")
    return None


def link_cache(run: Run, cache: Path) -> dict[str, str]:
    """Point each of the run's stage folders at the shared folder for that stage's key,
    `cache/<stage>-<key>`, so a stage whose key is unchanged is reused and one whose key changed
    is redone beside the old results (which a later config with the old key reuses again).
    A folder written in place is first moved into the cache under its own key. Returns
    {stage: key it held} for the stages whose key changed.

    Links are made under a temporary name and renamed into place, so processes linking the same
    run at once cannot trip over each other."""
    links = {name: run.dir / stage.folder for name, stage in STAGES.items()}
    in_place = {name: _in_place(link) for name, link in links.items() if link.is_dir() and not link.is_symlink()}  # all checked first
    changed = {}
    for name, link in links.items():
        target = cache / f"{name}-{run.keys[name]}"
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink():
            changed[name] = link.resolve().name.removeprefix(f"{name}-")
        elif name in in_place:
            held = in_place[name]
            if held is not None and held != run.keys[name]:
                changed[name] = held
            kept = cache / f"{name}-{held}"
            if held is None or (kept / MANIFEST).is_file():
                shutil.rmtree(link)  # empty, or the cache holds that key's results already
            else:
                shutil.rmtree(kept, ignore_errors=True)
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(link, kept)
        target.mkdir(parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
        os.replace(tmp, link)  # also replaces a link left by an earlier config
    return changed


def _done(run: Run, name: str, cache: Path | None) -> bool:
    """Whether a stage finished under this config's key, in its folder or (with a cache) in the cache."""
    folders = [run.dir / STAGES[name].folder] + ([cache / f"{name}-{run.keys[name]}"] if cache is not None else [])
    for folder in folders:
        manifest = read_json(folder / MANIFEST) if (folder / MANIFEST).is_file() else {}
        if manifest.get("key") == run.keys[name] and manifest.get("complete"):
            return True
    return False


def preflight(run: Run, stages: Sequence[str], previous: dict | None = None, cache: Path | None = None) -> None:
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
    try:
        for name in stages:
            if cache is None:
                run.stage_dir(name).is_done()  # raises if another config wrote this stage's folder
            for upstream in STAGES[name].after:
                if upstream not in stages and upstream in stages_for(run.selector) and not _done(run, upstream, cache):
                    raise RunDirError(f"stage '{upstream}' has not finished for this config (key {run.keys[upstream]}) in "
                                      f"{run.dir}; run `rose {upstream}` (or `rose run`) first")
    except RunDirError as e:
        raise RunDirError(f"{e}{_changes_hint(run, previous or {})}") from e


def run_stages(config: RunConfig, names: Sequence[str] | None = None, dist: Dist | None = None, base: Run | None = None,
               wait: bool = True, inputs: RunInputs | None = None, cache: Path | None = None) -> Run:
    """Run the named stages (default: all that the selection method needs) in pipeline order;
    completed stages are skipped. `base`: an earlier Run whose loaded model and data to reuse;
    `inputs`: records already read and checked for this config (by the CLI, before torch loaded);
    `cache`: keep stage folders there by key (`link_cache`), so a changed config redoes only the
    stages whose key changed; without it a stage folder of another config is refused.

    The main process holds each stage folder's lock while the stage runs, so processes sharing
    folders never write one at once; with wait=False a stage held elsewhere raises StageBusy."""
    run = base.with_config(config) if base is not None else Run(config, dist or Dist.from_env(), inputs)
    wanted = list(names or stages_for(run.selector))
    unknown = [n for n in wanted if n not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    previous = previous_config(run.dir)  # before record_config replaces it
    preflight(run, wanted, previous, cache)
    if cache is not None:
        if run.dist.is_main and (changed := link_cache(run, cache)):
            log.info("stage keys changed: %s%s", ", ".join(f"{n} {old} -> {run.keys[n]}" for n, old in changed.items()),
                     _changes_hint(run, previous))
        run.dist.barrier()
    if run.dist.is_main:
        run.dir.mkdir(parents=True, exist_ok=True)
        record_config(run)
        run.tracker = Trackers(config.report_to, run.dir, to_dict(config))
    try:
        for name, stage in STAGES.items():
            if name in wanted:
                if run.dist.is_main:
                    log.info("stage %s%s", name, " (done: reused)" if run.stage_dir(name).is_done() else "")
                with folder_lock(run.stage_dir(name).path, wait) if run.dist.is_main else nullcontext():
                    execute(stage, run)
        if run.dist.is_main and names is None:
            summary = summarize(run)
            run.tracker.log("stage_seconds", summary["stage_seconds"])
            run.tracker.log("eval", {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    finally:
        run.tracker.close()
        run.tracker = Trackers()
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
