"""What the stages of one process share: the run (config, folders, stage keys, selection method),
its tokenised inputs and the model, each loaded once and only when a stage needs it.

run_dir/
  warmup/epoch-K/{adapter/, optimizer.safetensors, state.json}   LoRA warm-up checkpoints
  base_logprobs/{validation,heldout,tests}_{logps,counts}.npy     base-model log-probs
  grads/val/epoch-K/grads.npy                                     [M, d] validation-gradient projections
  grads/train/epoch-K/shard-*.npy                                 [N, d] Adam-direction projections
  scores/{scores.npy, per_subtask.npy, scores.json}               the selection method's scores
  selection/{selected.jsonl, selection.json}                      top share of the pool
  finetune/epoch-K/adapter/                                       LoRA fine-tuned on the selection
  eval/metrics.json                                               held-out accuracy, margin, NLL, ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from tqdm.auto import tqdm

from .config import LoraConfig, ModelConfig, RunConfig
from .distributed import Dist, part_like
from .encoding import encode_example, encode_pair, encode_test
from .errors import InputError, PromptTooLong, RunDirError
from .inputs import RunInputs
from .keys import InputDigests, KeyParts, fingerprint, input_digests, stage_keys
from .models import (
    add_lora,
    compile_lora_free_blocks,
    compile_rotary_embedding,
    load_adapter_weights,
    load_model,
    load_tokenizer,
    lora_parameters,
    resolve_model,
    set_adapter_dtype,
    shard_model,
)
from .selectors import SelectionOptions, Selector, get_selector
from .stages import STAGES
from .store import StageDir
from .trackers import Trackers
from .train import Checkpoint

log = logging.getLogger("rose")


@dataclass(frozen=True)
class EncodedSet:
    """One input's records and their token ids, index for index (pairs: (chosen, rejected) ids)."""

    records: list
    encoded: list


class Loaded:
    """Models and tokenised inputs this process has loaded, keyed by everything they depend on, so
    that runs with other configs (the variants of `rose compare`) reuse what is the same."""

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        if key not in self._items:
            self._items[key] = build()
        return self._items[key]


class ModelHandle:
    """The base model with LoRA adapters, loaded once: stages load adapter weights into it, start
    fresh adapters for training, or switch adapters off for the base model (`model.disable_adapter()`).
    `sharded`: its decoder layers are sharded over the processes (model.shard=fsdp under torchrun)."""

    def __init__(self, model_config: ModelConfig, lora: LoraConfig, seed: int, device: torch.device,
                 sharded: bool = False) -> None:
        self.config, self.lora, self.seed, self.device, self.sharded = model_config, lora, seed, device, sharded

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.config)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @cached_property
    def model(self) -> PeftModel:
        """The base model with (freshly initialised, seeded) LoRA adapters; on a GPU with
        model.compile_blocks, its LoRA-free blocks and rotary embedding compiled for every pass that follows.

        A sharded model is read into host memory, given its fresh adapters whole (kept, see
        `fresh_adapters`), then sharded onto the device layer by layer."""
        torch.manual_seed(self.seed)
        model = add_lora(load_model(self.config, self.device, on_host=self.sharded), self.lora, self.config.revision)
        if self.sharded:
            self._fresh = {name: p.detach().clone() for name, p in self._reset_adapters(model).items()}
            shard_model(model, self.device)
        quantized = getattr(model.get_base_model(), "hf_quantizer", None) is not None  # its kernels are not traced
        if self.config.compile_blocks and self.device.type == "cuda" and not quantized:
            blocks, rope = compile_lora_free_blocks(model), compile_rotary_embedding(model)
            if blocks or rope:
                log.info("compiled %d LoRA-free decoder blocks%s", blocks, " and the rotary embedding" if rope else "")
        return model

    @cached_property
    def param_names(self) -> list[str]:
        """The LoRA weights, in model order: the space gradients live in."""
        return list(lora_parameters(self.model))

    @cached_property
    def segments(self) -> list[int]:
        """Sizes of the LoRA weight matrices, in order: the segments of the gradient space."""
        return [p.numel() for p in lora_parameters(self.model).values()]

    def fresh_adapters(self) -> PeftModel:
        """Re-initialise the adapters (seeded) in float32, for a training run from the base model. A
        sharded model takes its part of the weights drawn whole before it was sharded: drawn on the
        parts, the random numbers would differ from one process's."""
        if not self.sharded:
            self._reset_adapters(self.model)
            return self.model
        with torch.no_grad():
            for name, p in lora_parameters(self.model).items():
                p.copy_(part_like(self._fresh[name], p))
        return self.model

    def _reset_adapters(self, model: PeftModel) -> dict[str, torch.nn.Parameter]:
        """Fresh seeded float32 adapters, as `get_peft_model` draws them; returns the LoRA weights."""
        torch.manual_seed(self.seed)
        set_adapter_dtype(model, torch.float32)
        for module in model.modules():
            if hasattr(module, "reset_lora_parameters"):
                module.reset_lora_parameters("default", True)
        return lora_parameters(model)

    def load_adapter(self, adapter: Path) -> None:
        """Saved adapter weights, for inference or gradients (in the base model's dtype; a sharded
        model's float32 parts are gathered in it, `models.shard_model`)."""
        load_adapter_weights(self.model, adapter)
        if not self.sharded:
            set_adapter_dtype(self.model, self.model.get_base_model().dtype)
        self.model.eval()



class Run:
    """One config's run in this process: its folders and stage keys, selection method, inputs and model."""

    def __init__(self, config: RunConfig, dist: Dist | None = None, inputs: RunInputs | None = None,
                 loaded: Loaded | None = None) -> None:
        self.config = config
        self.dir = Path(config.run_dir)
        self.dist = dist or Dist()
        self.device = self.dist.device(config.model.device)
        self.selector: Selector = get_selector(config.select.method)
        self.options: SelectionOptions = config.select.options
        self.inputs = inputs if inputs is not None and inputs.config == config else RunInputs(config)
        self.loaded = loaded or Loaded()
        self.tracker = Trackers()  # none unless the pipeline opens the configured ones (report_to)

    def with_config(self, config: RunConfig) -> Run:
        """A run of another config in this process, reusing what it has loaded where that is the same."""
        return Run(config, self.dist, loaded=self.loaded)

    # --------------------------------------------------------------------------- keys and folders

    @cached_property
    def digests(self) -> InputDigests:
        model = self.config.model
        return input_digests(self.config, self.loaded.get(("model folder", model.name, model.revision), self._model_folder))

    def _model_folder(self) -> str | None:
        """Where the model's files are (once per process: a .gguf name is hashed to find its folder)."""
        try:
            return resolve_model(self.config.model.name, self.config.model.revision)
        except InputError:  # a hub id neither cached nor reachable: keyed by its name alone, as the stages that need no model run
            return None

    @cached_property
    def keys(self) -> dict[str, str]:
        """Each stage's key: what its results depend on (see each `Stage.key`)."""
        return stage_keys(self.config, self.digests, {name: stage.key for name, stage in STAGES.items()})

    @cached_property
    def parts(self) -> KeyParts:
        return KeyParts(self.config, self.digests, self.keys)

    def stage_dir(self, name: str) -> StageDir:
        return StageDir(self.dir / STAGES[name].folder, name, self.keys[name])

    def require(self, name: str) -> StageDir:
        sd = self.stage_dir(name)
        if not sd.is_done():
            raise RunDirError(f"stage '{name}' has not finished in {sd.path}; run `rose {name}` (or `rose run`) first")
        return sd

    def checkpoints(self) -> list[Checkpoint]:
        sd = self.require("warmup")
        return [Checkpoint(sd.path / name) for name in sd.manifest()["checkpoints"]]

    # --------------------------------------------------------------------------- model and inputs

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded over this run's processes (model.shard=fsdp under torchrun):
        then every stage that runs it runs on every process, in step (`stages.execute`)."""
        return self.config.model.shard == "fsdp" and self.dist.world > 1

    @property
    def model(self) -> ModelHandle:
        c = self.config
        key = ("model", fingerprint([c.model, c.lora, c.seed]), str(self.device))
        return self.loaded.get(key, lambda: ModelHandle(c.model, c.lora, c.seed, self.device, self.sharded))

    @property
    def pool(self) -> EncodedSet:
        encoded = self._encoded("pool", self.parts.pool, encode_example)
        if not encoded.records:
            raise InputError(", ".join(self.inputs.pool_files), "every pool example's prompt is longer than "
                                                                f"model.max_length ({self.config.model.max_length})")
        return encoded

    @property
    def validation(self) -> EncodedSet:
        encoded = self._encoded("validation", self.parts.validation, encode_pair)
        if not encoded.records:
            raise InputError(", ".join(self.config.data.validation.paths), "no usable validation pairs")
        return encoded

    @property
    def heldout(self) -> EncodedSet:
        """The held-out preference pairs (empty when none are configured)."""
        return self._encoded("heldout", self.parts.evaluation, encode_pair)

    @property
    def tests(self) -> EncodedSet:
        """Test prompts and the ids of prompt + golden answer."""
        return self._encoded("tests", self.parts.evaluation, encode_test)

    def _encoded(self, name: str, key: str, encode_one) -> EncodedSet:
        return self.loaded.get((name, key), lambda: self._fit(getattr(self.inputs, name), encode_one, name))

    def _fit(self, items: Sequence, encode_one, what: str) -> EncodedSet:
        """Tokenise items; one whose prompt exceeds max_length is an error, or dropped (model.overlong=skip)."""
        tokenizer, skip = self.model.tokenizer, self.config.model.overlong == "skip"  # a model error surfaces here, never as a skip
        kept, encoded = [], []
        for item in tqdm(items, desc=f"tokenise {what}", unit="ex", disable=not self.dist.is_main or len(items) < 2000):
            try:
                encoded.append(encode_one(tokenizer, item, self.config.model.max_length))
                kept.append(item)
            except PromptTooLong:
                if not skip:
                    raise
        if len(kept) < len(items):
            log.warning("skipped %d %s items whose prompt exceeds model.max_length=%d", len(items) - len(kept), what,
                        self.config.model.max_length)
        return EncodedSet(kept, encoded)
