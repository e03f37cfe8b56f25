"""The run's data as records, read and checked without torch or the model.

Every input file is parsed and checked here (file:line:field errors, `formats.py`) before a model
is loaded, so a broken held-out file fails in seconds rather than after an hour of warm-up; the
`Run` then tokenises these same records. Sampling (`pool_limit`, `limit`, `test_limit`) is seeded,
so every process and every rerun sees the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np

from .config import PreferenceSource, RunConfig, expand_globs
from .errors import InputError, RunDirError
from .formats import Example, PreferencePair, TestPrompt, read_pool, read_preferences, read_test_prompts


def sample_indices(n: int, k: int | None, seed: int) -> list[int]:
    """A seeded random subset of range(n), kept in order (all of it when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


def check_run_dir(run_dir: str) -> None:
    """The run directory must be a folder, or not exist yet."""
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise RunDirError(f"run_dir {run_dir} exists and is not a folder; choose another run_dir")


def prompt_key(prompt: tuple) -> str:
    return json.dumps(prompt, sort_keys=True)


class RunInputs:
    """Pool, validation, held-out and test records of one config, each read once when first used."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def check(self, names: Collection[str]) -> None:
        """Read and check the named inputs (of pool, validation, heldout, tests): InputError on the first bad row."""
        for name in names:
            getattr(self, name)

    @cached_property
    def pool_files(self) -> list[str]:
        files = expand_globs(self.config.data.pool)
        if not files:
            raise InputError("data.pool", "no pool files configured", field="data.pool")
        return files

    @cached_property
    def pool(self) -> list[Example]:
        rows = read_pool(self.pool_files, self.config.data.columns, self.config.data.response_template)
        if not rows:
            raise InputError(", ".join(self.pool_files), "the pool files hold no rows")
        return [rows[i] for i in sample_indices(len(rows), self.config.data.pool_limit, self.config.seed)]

    def preferences(self, source: PreferenceSource, seed_offset: int) -> list[PreferencePair]:
        files = expand_globs(source.paths)
        if not files:
            raise InputError("data", "no preference files configured", field="paths")
        pairs = read_preferences(files, source.format, source.pairs, source.subtasks, self.config.data.empty_responses, source.columns,
                                 source.subtask_names)
        return [pairs[i] for i in sample_indices(len(pairs), source.limit, self.config.seed + seed_offset)]

    @cached_property
    def validation(self) -> list[PreferencePair]:
        return self.preferences(self.config.data.validation, 1)

    @cached_property
    def heldout(self) -> list[PreferencePair]:
        """Held-out pairs minus those whose prompt is a validation prompt or in `heldout_exclude`."""
        cfg = self.config.data
        if not cfg.heldout.paths:
            return []
        pairs = self.preferences(replace(cfg.heldout, limit=None), 2)
        seen = {prompt_key(p.prompt) for p in self.validation} if cfg.heldout_exclude_validation else set()
        if cfg.heldout_exclude:
            seen |= {prompt_key(p.prompt) for p in read_preferences(expand_globs(cfg.heldout_exclude), "auto", "all", "none", "skip")}
        pairs = [p for p in pairs if prompt_key(p.prompt) not in seen]
        return [pairs[i] for i in sample_indices(len(pairs), cfg.heldout.limit, self.config.seed + 2)]

    @cached_property
    def tests(self) -> list[TestPrompt]:
        cfg = self.config.data
        items = read_test_prompts(expand_globs(cfg.test), cfg.empty_responses) if cfg.test else []
        return [items[i] for i in sample_indices(len(items), cfg.test_limit, self.config.seed + 3)]
