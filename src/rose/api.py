"""The Python API: `rose.select(pool, target)` runs the stages a selection needs and returns it.

It goes through the same config checks and the same `pipeline.run_stages` as `rose run`, so a
call is resumable and a second call with the same inputs and settings reuses every finished
stage. Data given in memory (a list of dicts, a `datasets.Dataset`) is written into the run
directory first (`inputs/<content hash>/pool.jsonl`, ...), because stages communicate and are
keyed through files. For finer control, `selection_config` builds the config without running
anything, `rose.run_stages(config, names)` runs any stages, and `read_selection` reads a
finished selection back. This module imports no torch until a run starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import yaml

from .config import RunConfig, load_config, to_dict
from .errors import ConfigError
from .inputs import check_run_dir
from .selectors import Selector, get_selector
from .stages import STAGES, stages_for

if TYPE_CHECKING:
    import datasets

    from .context import Run

# A source as config accepts it (a path or hf:// id), several of them, or the rows themselves:
# a list of dicts, a `datasets.Dataset`, or (preference sets in the ROSE paper's format) a dict keyed by prompt.
Data = Union[str, os.PathLike, Sequence[str | os.PathLike], Sequence[Mapping], Mapping, "datasets.Dataset"]


@dataclass(frozen=True)
class SelectionFiles:
    """The files of a selection (`exports.write_exports` writes them), under run_dir/selection/."""

    folder: Path
    jsonl: Path  # selected rows as the pool holds them, best first
    parquet: Path  # the same as a table
    dataset: Path  # the same as a `datasets.load_from_disk` folder
    sft: Path  # TRL prompt/completion rows, for SFTTrainer
    scores_parquet: Path  # every pool example ranked by score
    scores_csv: Path
    summary: Path  # selection.json: method, counts, per-source shares, selected ids and scores

    @classmethod
    def of(cls, folder: Path) -> SelectionFiles:
        return cls(folder, folder / "selected.jsonl", folder / "selected.parquet", folder / "selected", folder / "sft.jsonl",
                   folder / "scores.parquet", folder / "scores.csv", folder / "selection.json")


@dataclass(frozen=True, eq=False)
class Selection:
    """A finished selection. Pool index i is the i-th example of the pool as the run read it: the
    rows as given, in order, unless data.pool_limit samples them or model.overlong=skip drops some
    (`ids` names them either way)."""

    run_dir: Path
    method: str
    ids: list[str]  # the pool's example ids, index for index with `scores`
    scores: np.ndarray  # [N] every pool example's score (higher is selected first)
    indices: np.ndarray  # [k] the selected pool indices, best first
    rows: list[dict]  # the selected rows as the pool holds them, best first
    files: SelectionFiles

    @property
    def dataset(self) -> datasets.Dataset:
        """The selected rows as a `datasets.Dataset` (the saved selected/ folder), best first."""
        import datasets

        return datasets.load_from_disk(str(self.files.dataset))


def select(pool: Data, target: Data, *, model: str | None = None, fraction: float | None = None, method: str | None = None,
           run_dir: str | os.PathLike | None = None, heldout: Data | None = None, test: Data | None = None,
           config: RunConfig | str | os.PathLike | None = None, **overrides: Any) -> Selection:
    """Score every example of `pool` by how much training on it helps the `target` preference set,
    and return the top `fraction` of it (default 0.05).

    pool: instruction rows ({messages}, TRL {prompt, completion} or {text}); target: preference
    pairs ({prompt, chosen, rejected}, HH transcripts or the ROSE paper's files); each a path, an
    hf://OWNER/NAME[:SPLIT] id, a list of them, a list of dicts or a `datasets.Dataset`.
    heldout, test: optional evaluation sets (only read by `rose run`'s later stages and
    base-logprobs). model: model.name (built-in name, hub id, local folder or .gguf). method:
    select.method (rose, less, random, bm25, embedding, full). config: a YAML file or RunConfig to
    start from; `overrides` set any other config section or key, e.g. `lora={"r": 16}`,
    `seed=1` or `**{"warmup.epochs": 2}`. Runs the stages up to `select` (not finetune/evaluate).
    """
    from .pipeline import run_stages  # torch loads here, once the config and inputs are known good

    cfg = selection_config(pool, target, model=model, fraction=fraction, method=method, run_dir=run_dir, heldout=heldout,
                           test=test, config=config, **overrides)
    return read_selection(run_stages(cfg, selection_stages(get_selector(cfg.select.method))))


def selection_config(pool: Data, target: Data, *, model: str | None = None, fraction: float | None = None,
                     method: str | None = None, run_dir: str | os.PathLike | None = None, heldout: Data | None = None,
                     test: Data | None = None, config: RunConfig | str | os.PathLike | None = None, **overrides: Any) -> RunConfig:
    """The checked RunConfig `select` runs (same arguments); data given in memory is written into
    run_dir/inputs/ here, under a folder named by its content, so the same rows give the same files."""
    start = config if isinstance(config, RunConfig) else load_config(config)
    folder = Path(run_dir if run_dir is not None else start.run_dir).resolve()
    check_run_dir(str(folder))  # before any input is written into it
    settings: dict[str, Any] = {**overrides, "run_dir": str(folder)}
    named = {"model.name": model, "select.fraction": fraction, "select.method": method}
    settings.update({key: value for key, value in named.items() if value is not None})
    settings["data.pool"] = _sources(pool, "pool", folder)
    settings["data.validation.paths"] = _sources(target, "validation", folder)
    if heldout is not None:
        settings["data.heldout.paths"] = _sources(heldout, "heldout", folder)
    if test is not None:
        settings["data.test"] = _sources(test, "test", folder)
    return load_config(None, [f"{key}={_yaml_value(value)}" for key, value in settings.items()], base=to_dict(start))


def selection_stages(selector: Selector) -> list[str]:
    """The stages a selection needs, in pipeline order: `select`, the gradient stages (which the
    score stage reads) where the method uses them, and every stage these run after."""
    wanted = {"select"} | {name for name in stages_for(selector) if STAGES[name].gradients}
    for name in reversed(list(STAGES)):
        if name in wanted:
            wanted |= set(STAGES[name].after)
    return [name for name in STAGES if name in wanted]


def read_selection(run: Run) -> Selection:
    """The selection of a run whose `select` stage has finished."""
    from .stages.select import selected_indices
    from .store import read_json

    files = SelectionFiles.of(run.require("select").path)
    scores = np.load(run.require("score").path / "scores.npy")
    records = run.pool.records
    indices = np.asarray(selected_indices(run), dtype=np.int64)
    return Selection(run.dir, read_json(files.summary)["method"], [ex.id for ex in records], scores, indices,
                     [records[i].row for i in indices], files)


def _sources(data: Data, name: str, run_dir: Path) -> list[str]:
    """Source paths for config: paths and hub ids as given; rows written to run_dir/inputs/<hash>/<name>.jsonl
    (a dict keyed by prompt, the ROSE paper's preference format, to <name>.json)."""
    if isinstance(data, (str, os.PathLike)):
        return [os.fspath(data)]
    hf = sys.modules.get("datasets")  # a Dataset can only exist if datasets is imported
    if hf is not None and isinstance(data, (hf.DatasetDict, hf.IterableDatasetDict)):
        raise ConfigError(f"{name}: a DatasetDict holds several splits; pass one, e.g. dataset['train']")
    if isinstance(data, Mapping):
        text, suffix = json.dumps(dict(data), ensure_ascii=False, default=str), ".json"
    else:
        rows = list(data)
        if rows and all(isinstance(r, (str, os.PathLike)) for r in rows):
            return [os.fspath(r) for r in rows]
        if not all(isinstance(r, Mapping) for r in rows):
            raise ConfigError(f"{name}: expected a path, an hf:// id, a list of them, a list of dicts or a datasets.Dataset")
        text, suffix = "".join(json.dumps(dict(r), ensure_ascii=False, default=str) + "\n" for r in rows), ".jsonl"
    from .store import atomic_write_text

    path = run_dir / "inputs" / hashlib.sha256(text.encode()).hexdigest()[:16] / f"{name}{suffix}"
    if not path.is_file():
        atomic_write_text(path, text)
    return [str(path)]


def _yaml_value(value: Any) -> str:
    """A value as an override's text: YAML in flow style, read back as the same value."""
    return yaml.safe_dump([value], default_flow_style=True, width=float("inf"), allow_unicode=True).strip()[1:-1]
