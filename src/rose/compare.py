"""`rose compare`: every selection method at the same budget, plus the budget and few-shot sweeps.

Each variant is an ordinary run directory under `run_dir/variants/`. Stage folders are shared by
key: every variant's stage folder is a link into `run_dir/cache/<stage>-<key>`, so the warm-up and
the pool's gradients are computed once for ROSE and LESS and every budget, the base-model
reference log-probs once per task, and a variant that finished earlier is not redone. Results
accumulate in `run_dir/compare/results.json`, so an interrupted comparison resumes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .config import RunConfig
from .context import FOLDERS, Run, stages_for
from .pipeline import record_config, run_stages
from .store import read_json, write_json

log = logging.getLogger("rose")


@dataclass(frozen=True)
class Variant:
    name: str
    group: str  # "main", "budget" or "shots"
    method: str
    fraction: float
    seed: int | None
    shots: str | None
    config: RunConfig


def variants(config: RunConfig) -> list[Variant]:
    """The main comparison, then the budget sweep, then the few-shot sweep (duplicates dropped)."""
    cmp, base_fraction = config.compare, config.select.fraction
    out: dict[str, Variant] = {}

    def add(group: str, method: str, fraction: float, seed: int | None = None, shots: str | None = None) -> None:
        name = method + (f"-seed{seed}" if seed is not None else "") + ("" if method == "full" else f"-p{fraction:g}")
        name += f"-{shots}shot" if shots is not None else ""
        select = replace(config.select, method=method, fraction=fraction, seed=seed or 0)
        data = config.data if shots is None else replace(config.data, validation=replace(config.data.validation, paths=cmp.shots[shots]))
        finetune = replace(config.finetune, epochs=cmp.full_epochs) if method == "full" else config.finetune
        run_dir = str(Path(config.run_dir) / "variants" / name)
        out.setdefault(name, Variant(name, group, method, fraction, seed, shots,
                                     replace(config, run_dir=run_dir, select=select, data=data, finetune=finetune)))

    for method in cmp.methods:
        for seed in cmp.random_seeds if method == "random" else [None]:
            add("main", method, base_fraction, seed)
    for fraction in cmp.budgets:
        for method in cmp.budget_methods:
            add("budget", method, fraction, cmp.random_seeds[0] if method == "random" else None)
    for shots in cmp.shots:
        for method in cmp.shot_methods:
            add("shots", method, base_fraction, None, shots)
    return list(out.values())


def link_cache(run: Run, cache: Path) -> None:
    """Point each of the run's stage folders at the shared folder for that stage's key."""
    for stage, folder in FOLDERS.items():
        target = cache / f"{stage}-{run.keys[stage]}"
        link = run.dir / folder
        if link.is_symlink() and link.resolve() == target.resolve():
            continue
        if link.is_symlink():
            link.unlink()  # the variant's config changed since its last run
        elif link.exists():
            raise FileExistsError(f"{link} is a real folder; compare variants keep their stages under {cache}")
        target.mkdir(parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def run_variant(variant: Variant, cache: Path, base: Run) -> tuple[dict, Run]:
    run = base.derive(variant.config)
    run.dir.mkdir(parents=True, exist_ok=True)
    link_cache(run, cache)
    run = run_stages(variant.config, stages_for(variant.method), base=run)
    metrics = read_json(run.dir / FOLDERS["evaluate"] / "metrics.json")
    selection = read_json(run.dir / FOLDERS["select"] / "selection.json")
    result = {"group": variant.group, "method": variant.method, "fraction": variant.fraction, "seed": variant.seed,
              "shots": variant.shots, "n_selected": selection["n_selected"], "sources": selection["sources"], **metrics}
    return result, run


def run_compare(config: RunConfig, on_result=None) -> dict[str, dict]:
    """Run every variant not yet in results.json; call on_result(results) after each one."""
    root = Path(config.run_dir)
    results_file = root / "compare" / "results.json"
    results: dict[str, dict] = read_json(results_file) if results_file.is_file() else {}
    todo = [v for v in variants(config) if v.name not in results]
    root.mkdir(parents=True, exist_ok=True)
    cache = Path(config.compare.cache_dir) if config.compare.cache_dir else root / "cache"
    base = Run(config)
    record_config(base)
    for i, variant in enumerate(todo, 1):
        log.info("compare: variant %d/%d: %s", i, len(todo), variant.name)
        results[variant.name], base = run_variant(variant, cache, base)
        write_json(results_file, results)
        if on_result is not None:
            on_result(results)
    return results
