"""`rose compare`: every selection method at the same budget, plus the budget and few-shot sweeps.

Each variant is an ordinary run directory under `run_dir/variants/`. Stage folders are shared by
key: every variant's stage folder is a link into `run_dir/cache/<stage>-<key>`, so the warm-up and
the pool's gradients are computed once for ROSE and LESS and every budget, the base-model
reference log-probs once per task, and a variant that finished earlier is not redone. Results
accumulate in `run_dir/compare/results.json`, so an interrupted comparison resumes, and several
processes (one per GPU) can share one comparison: stage folders are locked while written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .config import RunConfig
from .context import Run
from .distributed import Dist
from .errors import RoseError
from .pipeline import cache_dir, link_cache, record_config, run_stages
from .selectors import get_selector
from .stages import STAGES, stages_for
from .stages.evaluate import HELDOUT_CORRECT
from .store import StageBusy, folder_lock, read_json, write_json

log = logging.getLogger("rose")
POLL_SECONDS = 5.0  # how often a worker whose variants are all busy looks again


@dataclass(frozen=True)
class Variant:
    name: str
    group: str  # "main", "budget" or "shots"
    method: str  # a registered method or a compare.ablations name: the label in results and reports
    fraction: float
    seed: int | None  # selection seed (random)
    finetune_seed: int
    shots: str | None
    config: RunConfig


def runs_of(config: RunConfig, method: str) -> list[tuple[int | None, int]]:
    """(selection seed, fine-tune seed) of each run of a method (or ablation): random's selection
    seeds, each fine-tuned with the first fine-tune seed, or, for every other method, its one
    selection (a deterministic one) fine-tuned with each of compare.finetune_seeds."""
    cmp = config.compare
    if get_selector(cmp.select_for(method, config.select).method).seeded:
        return [(seed, cmp.finetune_seeds[0]) for seed in cmp.random_seeds]
    return [(None, finetune_seed) for finetune_seed in cmp.finetune_seeds]


def variants(config: RunConfig) -> list[Variant]:
    """The main comparison, then the budget sweep, then the few-shot sweep (duplicates dropped),
    each with every run of each method (`runs_of`), so that every point has its spread over seeds."""
    cmp, base_fraction = config.compare, config.select.fraction
    out: dict[str, Variant] = {}

    def add(group: str, method: str, fraction: float, seed: int | None, finetune_seed: int, shots: str | None = None) -> None:
        select = replace(cmp.select_for(method, config.select), fraction=fraction, seed=seed or 0)
        selects_all = get_selector(select.method).selects_all
        name = method + (f"-seed{seed}" if seed is not None else "") + ("" if selects_all else f"-p{fraction:g}")
        name += (f"-ft{finetune_seed}" if finetune_seed else "") + (f"-{shots}shot" if shots is not None else "")
        finetune = replace(config.finetune, seed=finetune_seed, **({"epochs": cmp.full_epochs} if selects_all else {}))
        run_dir = str(Path(config.run_dir) / "variants" / name)
        base = config if shots is None else config.with_shots(shots)
        out.setdefault(name, Variant(name, group, method, fraction, seed, finetune_seed, shots,
                                     replace(base, run_dir=run_dir, select=select, finetune=finetune)))

    for method in cmp.methods:
        for seed, finetune_seed in runs_of(config, method):
            add("main", method, base_fraction, seed, finetune_seed)
    for fraction in cmp.budgets:
        for method in cmp.budget_methods:
            for seed, finetune_seed in runs_of(config, method):
                add("budget", method, fraction, seed, finetune_seed)
    for shots in cmp.shots:
        for method in cmp.shot_methods:
            for seed, finetune_seed in runs_of(config, method):
                add("shots", method, base_fraction, seed, finetune_seed, shots)
    return list(out.values())


def _linked(run: Run, cache: Path) -> Run:
    """The run with its stage folders linked into the cache (by the main process; all then wait)."""
    if run.dist.is_main:
        run.dir.mkdir(parents=True, exist_ok=True)
        link_cache(run, cache)
    run.dist.barrier()
    return run


def run_variant(variant: Variant, cache: Path, base: Run, wait: bool = True) -> tuple[dict, Run]:
    run = _linked(base.with_config(variant.config), cache)
    run = run_stages(variant.config, stages_for(run.selector), base=run, wait=wait)
    evaluation = run.dir / STAGES["evaluate"].folder
    metrics = read_json(evaluation / "metrics.json")
    selection = read_json(run.dir / STAGES["select"].folder / "selection.json")
    result = {"group": variant.group, "method": variant.method, "selector": variant.config.select.method,
              "options": asdict(run.options), "fraction": variant.fraction, "seed": variant.seed,
              "finetune_seed": variant.finetune_seed, "shots": variant.shots, "n_selected": selection["n_selected"],
              "sources": selection["sources"], **metrics}
    if (evaluation / HELDOUT_CORRECT).is_file():  # in results.json, so that a report rewritten from it has the intervals
        result["heldout_correct"] = np.load(evaluation / HELDOUT_CORRECT).tolist()
    return result, run


def failed_result(variant: Variant, error: RoseError) -> dict:
    """A variant that stopped with a rose error (a diverged run, a prompt too long for one shot
    set), as results.json records it: what it was, and why it failed."""
    return {"group": variant.group, "method": variant.method, "fraction": variant.fraction, "seed": variant.seed,
            "finetune_seed": variant.finetune_seed, "shots": variant.shots, "failed": str(error)}


def _read_results(file: Path) -> dict[str, dict]:
    return read_json(file) if file.is_file() else {}


def _add_result(file: Path, name: str, result: dict) -> dict[str, dict]:
    """Add one variant's result to results.json (under a lock: other workers write it too)."""
    with folder_lock(file.parent):
        results = _read_results(file)
        results[name] = result
        write_json(file, results)
    return results


def prepare_shared(config: RunConfig, dist: Dist | None = None) -> None:
    """Compute into the cache the work that is shared or too big for one worker: the warm-up and
    the pool's gradients (with the first variant's validation gradients, which are cheap), then
    the full-pool fine-tune, which every task with the same pool reuses. Run it under torchrun on
    every GPU, then start workers for the rest."""
    dist, every = dist or Dist.from_env(), variants(config)
    todo = [(v, ["warmup", "base-logprobs", "val-grads", "train-grads"]) for v in every if get_selector(v.config.select.method).uses_gradients][:1]
    todo += [(v, ["score", "select", "finetune"]) for v in every if get_selector(v.config.select.method).selects_all]
    for variant, stages in todo:
        run = _linked(Run(variant.config, dist), cache_dir(config))
        run_stages(variant.config, stages, base=run)


def _priority(config: RunConfig, variant: Variant) -> tuple[float, int]:
    """Largest fine-tunes first, so that workers sharing the comparison finish at about the same
    time; then every method's first run before any method's second, so that a comparison stopped
    early (a time limit) has every method in it."""
    size = 1.0 if get_selector(variant.config.select.method).selects_all else variant.fraction
    runs = runs_of(config, variant.method)
    return -size, runs.index((variant.seed, variant.finetune_seed)) if (variant.seed, variant.finetune_seed) in runs else 0


def run_compare(config: RunConfig, on_result=None, dist: Dist | None = None) -> dict[str, dict]:
    """Run every variant not yet in results.json; call on_result(results) after each one.

    Several processes may run the same comparison at once (one per GPU, say): each takes the
    variants whose next stage no other process holds, waits when all are held, and skips what
    another has finished. Under torchrun all processes work on one variant at a time instead.
    A variant that stops with a rose error (`RoseError`: a diverged training run, NaN gradients or
    scores, a prompt of one shot set too long for the model) is recorded as failed, with the error,
    and the others go on; a later `rose compare` retries it (after a config change, say).
    """
    root = Path(config.run_dir)
    results_file = root / "compare" / "results.json"
    cache = cache_dir(config)
    base = Run(config, dist or Dist.from_env())
    alone = base.dist.world == 1  # a single process can step aside when a stage is busy
    if base.dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        record_config(base)
    pending = sorted(variants(config), key=lambda v: _priority(config, v))
    retry = {name for name, r in _read_results(results_file).items() if "failed" in r}
    while pending:
        busy = []
        for variant in pending:
            if variant.name in _read_results(results_file) and variant.name not in retry:
                continue  # finished earlier, or by another worker
            log.info("compare: %s", variant.name)
            try:
                result, base = run_variant(variant, cache, base, wait=not alone)
            except StageBusy as e:
                log.info("compare: %s waits (%s)", variant.name, e)
                busy.append(variant)
                continue
            except RoseError as e:
                log.error("compare: %s failed: %s", variant.name, e)
                result = failed_result(variant, e)
            retry.discard(variant.name)
            if base.dist.is_main:
                results = _add_result(results_file, variant.name, result)
                if on_result is not None:
                    on_result(results)
        if busy:
            time.sleep(POLL_SECONDS)
        pending = busy
    return _read_results(results_file)
