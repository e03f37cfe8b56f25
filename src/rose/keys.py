"""Stage keys: a short hash of everything a stage's results depend on.

A finished stage is reused only while its key matches (`store.StageDir`), and `rose compare`
shares stage folders between variants by key. What each stage's key is made of is declared with
the stage (`stages.Stage.key`) from the named parts below; this module turns a config and the
digests of its input files into those parts and the keys. Pure apart from `input_digests`, which
reads the files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import PreferenceSource, RunConfig, TrainConfig, expand_globs
from .selectors import get_selector
from .sources import source_digest

Digests = tuple[tuple[str, str], ...]  # (name, content hash) per input file


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (config sections, upstream keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class InputDigests:
    pool: Digests
    validation: Digests
    evaluation: Digests  # held-out pairs, test prompts and the held-out exclusion lists
    model: Digests = ()  # the model folder's config and tokenizer files (none for a hub id not on this machine)


#: The files of a model folder whose change makes every stage stale (a GGUF converted again with a
#: right tokenizer, a local folder overwritten); the weights are left out: hashing gigabytes for
#: every run costs more than the rare folder whose weights change under the same config.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
               "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")


def input_digests(config: RunConfig, model_folder: str | Path | None = None) -> InputDigests:
    """The content hashes of every configured input (files, saved datasets, hub splits) and of the
    resolved model folder's `MODEL_FILES`."""

    def of(patterns: list[str]) -> Digests:
        return tuple((Path(s).name, source_digest(s)) for s in expand_globs(patterns))

    data = config.data
    folder = Path(model_folder) if model_folder is not None and Path(model_folder).is_dir() else None
    model = tuple((name, source_digest(folder / name)) for name in MODEL_FILES if (folder / name).is_file()) if folder else ()
    return InputDigests(of(data.pool), of(data.validation.paths), of(data.heldout.paths + data.test + data.heldout_exclude), model)


def preference_source(section: PreferenceSource) -> dict:
    """A preference source as it enters keys; unnamed subtask blocks leave keys as they were before
    blocks could be named, so earlier runs' stages stay valid."""
    return {k: v for k, v in asdict(section).items() if k != "subtask_names" or v}


def training(section: TrainConfig) -> dict:
    """A training section as it enters keys: how often resume points are saved does not change the
    weights, so it does not make a finished stage stale."""
    return {k: v for k, v in asdict(section).items() if k != "resume_every"}


class KeyParts:
    """The named ingredients of stage keys for one config; `stage(name)` is an upstream stage's key."""

    def __init__(self, config: RunConfig, digests: InputDigests, upstream: Mapping[str, str]) -> None:
        self.config, self._upstream = config, upstream
        c = config
        # a run may move between devices; compiling blocks and sharding the model change speed and memory, not results
        self.model = {k: v for k, v in asdict(c.model).items() if k not in ("device", "compile_blocks", "shard")}
        if digests.model:
            self.model["files"] = digests.model
        self.pool = fingerprint([digests.pool, c.data.pool_limit, c.data.columns, c.data.response_template, c.seed, self.model])
        self.validation = fingerprint([self.model, c.seed, preference_source(c.data.validation), digests.validation, c.data.empty_responses])
        # the held-out set depends on the validation prompts only when those are excluded from it
        self.evaluation = fingerprint([self.model, c.seed, preference_source(c.data.heldout), c.data.test, c.data.test_limit,
                                       c.data.empty_responses, c.data.heldout_exclude_validation, digests.evaluation,
                                       self.validation if c.data.heldout_exclude_validation else None])
        self.lora = asdict(c.lora)
        self.selector = get_selector(c.select.method)
        self.options = c.select.options

    def stage(self, name: str) -> str:
        return self._upstream[name]

    def training(self, section: TrainConfig) -> dict:
        return training(section)

    def projection(self, map_version: int) -> dict:
        """The projection as it shapes stored features (not how fast they are computed)."""
        skip = ("batch_tokens", "dpo_beta")
        return {k: v for k, v in asdict(self.config.gradients).items() if k not in skip} | {"map": map_version}


def stage_keys(config: RunConfig, digests: InputDigests, stages: Mapping[str, Callable[[KeyParts], Any]]) -> dict[str, str]:
    """Each stage's key, in order: the hash of what its `key` function says it depends on (which may
    include the keys of stages before it)."""
    keys: dict[str, str] = {}
    parts = KeyParts(config, digests, keys)
    for name, key in stages.items():
        keys[name] = fingerprint([name, key(parts)])
    return keys
