"""The context the stages of one process share: config, run folders, stage keys, and the data and
model, each loaded once and only when a stage needs it.

run_dir/
  warmup/epoch-K/{adapter/, optimizer.safetensors, state.json}   LoRA warm-up checkpoints
  grads/val/epoch-K/grads.npy, grads/val/reference_logps.npy      [M, d] validation-gradient projections
  grads/train/epoch-K/shard-*.npy                                 [N, d] Adam-direction projections
  scores/{scores.npy, per_subtask.npy, scores.json}               influence (or a baseline's scores)
  selection/{selected.jsonl, selection.json}                      top share of the pool
  reference/*.npy                                                 base-model log-probs for evaluation
  finetune/epoch-K/adapter/                                       LoRA fine-tuned on the selection
  eval/metrics.json                                               held-out accuracy, margin, NLL, ...
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from functools import cached_property
from pathlib import Path

import torch
from peft import PeftModel
from tqdm.auto import tqdm

from .config import GRADIENT_METHODS, RunConfig, TrainSettings, expand_globs
from .distributed import Dist
from .encoding import Encoded, encode_example, encode_pair, encode_test
from .errors import InputError, PromptTooLong, RunDirError
from .formats import Example, PreferencePair
from .grads.project import MAP_VERSION
from .inputs import RunInputs
from .models import (
    add_lora,
    compile_lora_free_blocks,
    load_adapter_weights,
    load_model,
    load_tokenizer,
    lora_parameters,
    set_adapter_dtype,
)
from .registry import STAGES
from .store import StageDir, file_digest, fingerprint
from .train import Checkpoint

log = logging.getLogger("rose")

FOLDERS = {name: stage.folder for name, stage in STAGES.items()}


def _training_key(settings: TrainSettings) -> dict:
    """A training section as it enters stage keys: how often resume points are saved does not
    change the weights, so it does not make a finished stage stale."""
    return {k: v for k, v in asdict(settings).items() if k != "resume_every"}


class Run:
    """What the stages of one process share: config, folders, and lazily loaded data and model."""

    def __init__(self, config: RunConfig, dist: Dist | None = None, inputs: RunInputs | None = None) -> None:
        self.config = config
        self.inputs = inputs if inputs is not None and inputs.config == config else RunInputs(config)
        self.dir = Path(config.run_dir)
        self.dist = dist or Dist()
        self.device = self.dist.device(config.model.device)

    def derive(self, config: RunConfig) -> Run:
        """A Run for another config that reuses this one's loaded model and data where they match."""
        other = Run(config, self.dist)
        a, b = self.config, config
        same = {
            "tokenizer": a.model == b.model,
            "model": a.model == b.model and a.lora == b.lora and a.seed == b.seed,
            "_pool": a.model == b.model and a.data.pool == b.data.pool and a.data.pool_limit == b.data.pool_limit and a.seed == b.seed,
            "validation_set": a.model == b.model and a.data.validation == b.data.validation and a.seed == b.seed
                              and a.data.empty_responses == b.data.empty_responses,
        }
        same["heldout"] = same["validation_set"] and a.data.heldout == b.data.heldout
        same["tests"] = a.model == b.model and (a.data.test, a.data.test_limit, a.data.empty_responses, a.seed) == (
            b.data.test, b.data.test_limit, b.data.empty_responses, b.seed)
        for name, reuse in same.items():
            if reuse and name in self.__dict__:
                other.__dict__[name] = self.__dict__[name]
        return other

    # --------------------------------------------------------------------------- inputs

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.config.model)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def pool_files(self) -> list[str]:
        return self.inputs.pool_files

    def _fit(self, items: list, encode_one, what: str) -> tuple[list, list]:
        """Encode items; one whose prompt exceeds max_length is an error, or dropped (model.overlong=skip)."""
        tokenizer, skip = self.tokenizer, self.config.model.overlong == "skip"  # a model error surfaces here, never as a skip
        kept, encoded = [], []
        for item in tqdm(items, desc=f"tokenise {what}", unit="ex", disable=not self.dist.is_main or len(items) < 2000):
            try:
                encoded.append(encode_one(tokenizer, item, self.config.model.max_length))
                kept.append(item)
            except PromptTooLong:
                if not skip:
                    raise
        if len(kept) < len(items):
            log.warning("skipped %d %s items whose prompt exceeds model.max_length=%d", len(items) - len(kept), what, self.config.model.max_length)
        return kept, encoded

    @cached_property
    def _pool(self) -> tuple[list[Example], list[Encoded]]:
        examples, encoded = self._fit(self.inputs.pool, encode_example, "pool")
        if not examples:
            raise InputError(", ".join(self.pool_files), f"every pool example's prompt is longer than model.max_length "
                                                          f"({self.config.model.max_length})")
        return examples, encoded

    @property
    def pool(self) -> list[Example]:
        return self._pool[0]

    @property
    def pool_encoded(self) -> list[Encoded]:
        return self._pool[1]

    @cached_property
    def validation_set(self) -> tuple[list[PreferencePair], list[tuple[Encoded, Encoded]]]:
        pairs, encoded = self._fit(self.inputs.validation, encode_pair, "validation")
        if not pairs:
            raise InputError(", ".join(self.config.data.validation.paths), "no usable validation pairs")
        return pairs, encoded

    @property
    def validation(self) -> list[PreferencePair]:
        return self.validation_set[0]

    @cached_property
    def heldout(self) -> tuple[list[PreferencePair], list[tuple[Encoded, Encoded]]]:
        """(pairs, encodings) of the held-out preference set; empty when none is configured."""
        return self._fit(self.inputs.heldout, encode_pair, "held-out")

    @cached_property
    def tests(self) -> tuple[list, list[Encoded]]:
        """(test prompts, encodings of prompt + golden answer)."""
        return self._fit(self.inputs.tests, encode_test, "test")

    # --------------------------------------------------------------------------- model

    @cached_property
    def model(self) -> PeftModel:
        """The base model with (freshly initialised) LoRA adapters; stages load weights into it."""
        torch.manual_seed(self.config.seed)
        return add_lora(load_model(self.config.model, self.device), self.config.lora)

    def fresh_adapters(self) -> PeftModel:
        """Re-initialise the adapters (seeded), for a training run that starts from the base model."""
        torch.manual_seed(self.config.seed)
        set_adapter_dtype(self.model, torch.float32)
        for module in self.model.modules():
            if hasattr(module, "reset_lora_parameters"):
                module.reset_lora_parameters("default", True)
        return self.model

    def compile_for_gradients(self) -> None:
        """On a GPU, with gradients.compile_blocks, compile the model's LoRA-free blocks (once)."""
        if self.device.type == "cuda" and self.config.gradients.compile_blocks:
            if n := compile_lora_free_blocks(self.model):
                log.info("compiling %d LoRA-free decoder blocks for the gradient passes", n)

    @cached_property
    def param_names(self) -> list[str]:
        return list(lora_parameters(self.model))

    @cached_property
    def segments(self) -> list[int]:
        """Sizes of the LoRA weight matrices, in order: the segments of the gradient space."""
        return [p.numel() for p in lora_parameters(self.model).values()]

    def load_adapter(self, adapter: Path) -> None:
        """Load saved adapter weights for inference or gradients (in the base model's dtype)."""
        load_adapter_weights(self.model, adapter)
        set_adapter_dtype(self.model, self.model.get_base_model().dtype)
        self.model.eval()

    # --------------------------------------------------------------------------- keys

    def _files_digest(self, files: list[str]) -> list[tuple[str, str]]:
        return [(Path(f).name, file_digest(f)) for f in files if Path(f).is_file()]

    @cached_property
    def keys(self) -> dict[str, str]:
        """Each stage's key: its config, its input files' hashes, and the keys of what it reads."""
        c = self.config
        model = {k: v for k, v in asdict(c.model).items() if k != "device"}  # a run may move between devices
        data = fingerprint([self._files_digest(self.pool_files), c.data.pool_limit, c.seed, model])
        validation = fingerprint([data, asdict(c.data.validation), self._files_digest(expand_globs(c.data.validation.paths)),
                                  c.data.empty_responses])
        warm = fingerprint([data, asdict(c.lora), _training_key(c.warmup)])
        proj = {k: v for k, v in asdict(c.gradients).items() if k not in ("batch_tokens", "compile_blocks", "dpo_beta")} | {"map": MAP_VERSION}
        val = fingerprint([warm, proj, c.gradients.dpo_beta, c.select.method, validation])
        train = fingerprint([warm, proj, val if c.gradients.projection == "none" else None])
        method = c.select.method
        if method in GRADIENT_METHODS:
            score = fingerprint([train, val, method])
        else:
            score = fingerprint([data, method, c.select.seed if method == "random" else None,
                                 validation if method in ("bm25", "embedding") else None])
        select = fingerprint([score, None if method == "full" else c.select.fraction])
        heldout = [asdict(c.data.heldout), c.data.test, c.data.test_limit, c.data.empty_responses, c.data.heldout_exclude_validation,
                   self._files_digest(expand_globs(c.data.heldout.paths + c.data.test + c.data.heldout_exclude))]
        # the held-out set depends on the validation prompts only when those are excluded from it
        reference = fingerprint([data, heldout, validation if c.data.heldout_exclude_validation else None])
        tune = fingerprint([select, asdict(c.lora), _training_key(c.finetune)])
        evaluate = fingerprint([tune, reference, validation, c.gradients.dpo_beta, asdict(c.eval.judge)])
        return {"warmup": warm, "val-grads": val, "train-grads": train, "score": score, "select": select,
                "reference": reference, "finetune": tune, "evaluate": evaluate}

    def stage(self, name: str) -> StageDir:
        return StageDir(self.dir / FOLDERS[name], name, self.keys[name])

    def require(self, name: str) -> StageDir:
        sd = self.stage(name)
        if not sd.is_done():
            raise RunDirError(f"stage '{name}' has not finished in {sd.path}; run `rose {name}` (or `rose run`) first")
        return sd

    def checkpoints(self) -> list[Checkpoint]:
        sd = self.require("warmup")
        return [Checkpoint(sd.path / name) for name in sd.manifest()["checkpoints"]]
