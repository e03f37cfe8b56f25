"""The ROSE stages. Each reads files from the run directory, writes its own folder, and is skipped
when its manifest is complete for the same key (config section + inputs + upstream keys).

run_dir/
  warmup/epoch-K/{adapter/, optimizer.safetensors, state.json}   LoRA warm-up checkpoints
  grads/train/epoch-K/shard-*.npy                                 [N, d] Adam-direction projections
  grads/val/epoch-K/grads.npy, grads/val/reference_logps.npy      [M, d] DPO gradient projections
  scores/{scores.npy, per_subtask.npy, scores.json}               influence
  selection/{selected.jsonl, selection.json}                      top share of the pool
  finetune/epoch-K/adapter/                                       LoRA fine-tuned on the selection
  eval/metrics.json                                               held-out accuracy, margin, NLL
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from tqdm.auto import tqdm

from .config import PreferenceSource, RunConfig, expand_globs
from .distributed import Dist
from .encoding import Encoded, encode_example, encode_pair, encode_test
from .errors import InputError, RunDirError
from .evaluate import golden_nll, preference_accuracy
from .formats import Example, PreferencePair, read_pool, read_preferences, read_test_prompts
from .grads import engine
from .grads.project import Projector, make_projector
from .grads.transform import ExactCosines, ProjectedFeatures
from .models import add_lora, load_adapter_weights, load_model, load_tokenizer, lora_parameters, set_adapter_dtype
from .score import checkpoint_weights, influence
from .selection import top_fraction, write_selection
from .store import StageDir, file_digest, fingerprint, load_shards, read_json, save_array, shard_name, shard_ranges, write_json
from .train import Checkpoint, train_lora

log = logging.getLogger("rose")


def _sample(n: int, k: int | None, seed: int) -> list[int]:
    """A seeded random subset of range(n), kept in pool order (all of it when k is None or >= n)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


def _prompt_key(prompt: tuple) -> str:
    return json.dumps(prompt, sort_keys=True)


class Run:
    """What the stages of one process share: config, folders, and lazily loaded data and model."""

    def __init__(self, config: RunConfig, dist: Dist | None = None) -> None:
        self.config = config
        self.dir = Path(config.run_dir)
        self.dist = dist or Dist()
        self.device = self.dist.device(config.model.device)

    # --------------------------------------------------------------------------- inputs

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.config.model)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @cached_property
    def pool_files(self) -> list[str]:
        files = expand_globs(self.config.data.pool)
        if not files:
            raise InputError("data.pool", "no pool files configured", field="data.pool")
        return files

    def _fit(self, items: list, encode_one, what: str) -> tuple[list, list]:
        """Encode items; one whose prompt exceeds max_length is an error, or dropped (model.overlong=skip)."""
        kept, encoded = [], []
        for item in tqdm(items, desc=f"tokenise {what}", unit="ex", disable=not self.dist.is_main or len(items) < 2000):
            try:
                encoded.append(encode_one(self.tokenizer, item, self.config.model.max_length))
                kept.append(item)
            except InputError:
                if self.config.model.overlong != "skip":
                    raise
        if len(kept) < len(items):
            log.warning("skipped %d %s items whose prompt exceeds model.max_length=%d", len(items) - len(kept), what, self.config.model.max_length)
        return kept, encoded

    @cached_property
    def _pool(self) -> tuple[list[Example], list[Encoded]]:
        rows = read_pool(self.pool_files)
        rows = [rows[i] for i in _sample(len(rows), self.config.data.pool_limit, self.config.seed)]
        examples, encoded = self._fit(rows, encode_example, "pool")
        if not examples:
            raise InputError(", ".join(self.pool_files), "the pool is empty")
        return examples, encoded

    @property
    def pool(self) -> list[Example]:
        return self._pool[0]

    @property
    def pool_encoded(self) -> list[Encoded]:
        return self._pool[1]

    def preferences(self, source: PreferenceSource, seed_offset: int) -> list[PreferencePair]:
        files = expand_globs(source.paths)
        if not files:
            raise InputError("data", "no preference files configured", field="paths")
        pairs = read_preferences(files, source.format, source.pairs, source.subtasks, self.config.data.empty_responses)
        return [pairs[i] for i in _sample(len(pairs), source.limit, self.config.seed + seed_offset)]

    @cached_property
    def validation_set(self) -> tuple[list[PreferencePair], list[tuple[Encoded, Encoded]]]:
        pairs, encoded = self._fit(self.preferences(self.config.data.validation, 1), encode_pair, "validation")
        if not pairs:
            raise InputError(", ".join(self.config.data.validation.paths), "no usable validation pairs")
        return pairs, encoded

    @property
    def validation(self) -> list[PreferencePair]:
        return self.validation_set[0]

    @cached_property
    def heldout(self) -> tuple[list[PreferencePair], list[tuple[Encoded, Encoded]]]:
        """(pairs, encodings) of the held-out preference set; empty when none is configured."""
        cfg = self.config.data
        if not cfg.heldout.paths:
            return [], []
        pairs = self.preferences(replace(cfg.heldout, limit=None), 2)
        if cfg.heldout_exclude_validation:
            seen = {_prompt_key(p.prompt) for p in self.validation}
            pairs = [p for p in pairs if _prompt_key(p.prompt) not in seen]
        return self._fit([pairs[i] for i in _sample(len(pairs), cfg.heldout.limit, self.config.seed + 2)], encode_pair, "held-out")

    @cached_property
    def tests(self) -> tuple[list, list[Encoded]]:
        """(test prompts, encodings of prompt + golden answer)."""
        cfg = self.config.data
        items = read_test_prompts(expand_globs(cfg.test), cfg.empty_responses) if cfg.test else []
        return self._fit([items[i] for i in _sample(len(items), cfg.test_limit, self.config.seed + 3)], encode_test, "test")

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
        c = self.config
        model = {k: v for k, v in asdict(c.model).items() if k != "device"}  # a run may move between devices
        data = fingerprint([self._files_digest(self.pool_files), c.data.pool_limit, c.seed, model])
        warm = fingerprint([data, asdict(c.lora), asdict(c.warmup)])
        proj = {k: v for k, v in asdict(c.gradients).items() if k not in ("batch_tokens", "dpo_beta")}
        val = fingerprint([warm, proj, c.gradients.dpo_beta, c.select.method, asdict(c.data.validation),
                           self._files_digest(expand_globs(c.data.validation.paths)), c.data.empty_responses])
        train = fingerprint([warm, proj, val if c.gradients.projection == "none" else None])
        score = fingerprint([train, val, c.select.method])
        select = fingerprint([score, c.select.fraction])
        tune = fingerprint([select, asdict(c.finetune)])
        evaluate = fingerprint([tune, asdict(c.data.heldout), c.data.heldout_exclude_validation, c.data.test, c.data.test_limit,
                                c.data.empty_responses])
        return {"warmup": warm, "train-grads": train, "val-grads": val, "score": score, "select": select,
                "finetune": tune, "evaluate": evaluate}

    def stage(self, name: str, folder: str) -> StageDir:
        return StageDir(self.dir / folder, name, self.keys[name])

    def require(self, name: str, folder: str) -> StageDir:
        sd = self.stage(name, folder)
        if not sd.is_done():
            raise RunDirError(f"stage '{name}' has not finished in {sd.path}; run `rose {name}` (or `rose run`) first")
        return sd

    def checkpoints(self) -> list[Checkpoint]:
        sd = self.require("warmup", "warmup")
        return [Checkpoint(sd.path / name) for name in sd.manifest()["checkpoints"]]


# ------------------------------------------------------------------------------- stages


def warmup(run: Run) -> None:
    """LoRA-train the base model on a random share of the pool; keep every epoch's checkpoint."""
    sd = run.stage("warmup", "warmup")
    if sd.is_done():
        return
    cfg = run.config
    n = len(run.pool)
    subset = _sample(n, max(1, math.ceil(cfg.warmup.fraction * n)), cfg.seed + 10)
    if run.dist.is_main:
        sd.begin()
    run.dist.barrier()
    log.info("warm-up: %d of %d pool examples, %d epochs", len(subset), n, cfg.warmup.epochs)
    started = time.perf_counter()
    ckpts = train_lora(run.fresh_adapters(), [run.pool_encoded[i] for i in subset], cfg.warmup, sd.path, run.pad_id,
                       cfg.seed, run.dist, save_checkpoints=True, log=log.info)
    if run.dist.is_main:
        sd.finish(checkpoints=[c.path.name for c in ckpts], subset=[run.pool[i].id for i in subset],
                  seconds=time.perf_counter() - started)
    run.dist.barrier()


def _projector(run: Run) -> Projector:
    g = run.config.gradients
    return make_projector(g.projection, run.segments, g.dim, g.seed)


def _reference_logps(run: Run) -> torch.Tensor:
    return torch.from_numpy(np.load(run.require("val-grads", "grads/val").path / "reference_logps.npy"))


def validation_grads(run: Run, sink, reference: torch.Tensor) -> torch.Tensor:
    """[M, sink.out_dim]: the validation gradients at the loaded checkpoint, through `sink`.

    ROSE takes the DPO loss of each pair (reference = adapters off); LESS the SFT loss of the
    chosen response. Both are plain (SGD) gradients.
    """
    cfg = run.config.gradients
    pairs, encoded = run.validation_set
    out = torch.zeros(len(pairs), sink.out_dim, dtype=torch.float64)
    if run.config.select.method == "less":
        batches = engine.sft_grads(run.model, run.param_names, [c for c, _ in encoded], run.pad_id, cfg.batch_tokens, run.device)
    else:
        batches = engine.dpo_grads(run.model, run.param_names, encoded, reference, cfg.dpo_beta, run.pad_id, cfg.batch_tokens, run.device)
    for idx, parts in batches:
        out[idx] = sink(parts).double().cpu()
    return out


class _RawGradients:
    """A sink that keeps whole gradients ([B, D]), for exact scoring against a few targets."""

    def __init__(self, dim: int) -> None:
        self.out_dim = dim

    def __call__(self, parts) -> torch.Tensor:
        return torch.cat(list(parts), dim=1)


def val_grads(run: Run) -> None:
    """Validation gradients at every checkpoint, projected and normalised (plus base-model log-probs)."""
    sd = run.stage("val-grads", "grads/val")
    if sd.is_done() or not run.dist.is_main:
        run.dist.barrier()
        return
    cfg = run.config.gradients
    ckpts = run.checkpoints()
    sd.begin()
    started = time.perf_counter()
    pairs, encoded = run.validation_set
    with run.model.disable_adapter():
        flat = [s for pair in encoded for s in pair]
        ref, _ = engine.sequence_logprobs(run.model, flat, run.pad_id, cfg.batch_tokens, run.device)
    reference = ref.view(-1, 2)
    save_array(sd.path / "reference_logps.npy", reference.numpy())
    if cfg.projection != "none":  # exact scoring recomputes full validation gradients in train-grads
        sink = ProjectedFeatures(_projector(run))
        for ckpt in tqdm(ckpts, desc="validation gradients", unit="ckpt"):
            run.load_adapter(ckpt.adapter)
            save_array(sd.path / ckpt.path.name / "grads.npy", validation_grads(run, sink, reference).float().numpy())
    sd.finish(ids=[p.id for p in pairs], subtasks=[p.subtask for p in pairs], checkpoints=[c.path.name for c in ckpts],
              seconds=time.perf_counter() - started)
    run.dist.barrier()


def train_grads(run: Run) -> None:
    """Per-example SFT gradients of the pool at every checkpoint, in Adam's update direction.

    Stored as projected unit vectors [N, d], or, with gradients.projection=none, as exact cosines
    [N, M] with the full validation gradients. Written in shards, each rank taking every world-th
    shard; finished shards are kept, so a killed run resumes where it stopped.
    """
    sd = run.stage("train-grads", "grads/train")
    if sd.is_done():
        return
    cfg = run.config.gradients
    ckpts = run.checkpoints()
    exact = cfg.projection == "none"
    reference = _reference_logps(run) if exact else None
    if run.dist.is_main:
        sd.begin()
    run.dist.barrier()
    projector, encoded = (None if exact else _projector(run)), run.pool_encoded
    shards = shard_ranges(len(encoded), cfg.shard_size)
    mine = [s for i, s in enumerate(shards) if i % run.dist.world == run.dist.rank]
    started = time.perf_counter()
    bar = tqdm(total=len(ckpts) * sum(b - a for a, b in mine), desc="train gradients", unit="ex", disable=not run.dist.is_main)
    for ckpt in ckpts:
        folder = sd.path / ckpt.path.name
        todo = [(a, b) for a, b in mine if not (folder / shard_name(a, b)).is_file()]
        bar.update(sum(b - a for a, b in mine) - sum(b - a for a, b in todo))
        if not todo:
            continue
        run.load_adapter(ckpt.adapter)
        moments = ckpt.moments(run.param_names).to(run.device)
        if exact:
            targets = validation_grads(run, _RawGradients(sum(run.segments)), reference).to(run.device)
            sink = ExactCosines(targets.split(run.segments, dim=1), moments)
        else:
            sink = ProjectedFeatures(projector, moments)
        for start, stop in todo:
            out = np.zeros((stop - start, sink.out_dim), dtype=np.float32)
            for idx, parts in engine.sft_grads(run.model, run.param_names, encoded[start:stop], run.pad_id, cfg.batch_tokens, run.device):
                out[idx] = sink(parts).float().cpu().numpy()
                bar.update(len(idx))
            save_array(folder / shard_name(start, stop), out)
    bar.close()
    run.dist.barrier()
    if run.dist.is_main:
        sd.finish(n=len(encoded), shard_size=cfg.shard_size, exact=exact, checkpoints=[c.path.name for c in ckpts],
                  seconds=time.perf_counter() - started)
    run.dist.barrier()


def gradient_scores(run: Run) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """(scores [N], per-subtask [N, S], subtask names, checkpoint weights) from the gradient stages."""
    train_sd, val_sd = run.require("train-grads", "grads/train"), run.require("val-grads", "grads/val")
    tm, vm = train_sd.manifest(), val_sd.manifest()
    ckpts = run.checkpoints()
    weights = checkpoint_weights([c.mean_lr() for c in ckpts])
    train = [load_shards(train_sd.path / c.path.name, tm["n"], tm["shard_size"]) for c in ckpts]
    if tm["exact"]:  # the shards already hold cosines with each validation item
        val = [np.eye(len(vm["subtasks"]), dtype=np.float32)] * len(ckpts)
    else:
        val = [np.load(val_sd.path / c.path.name / "grads.npy") for c in ckpts]
    scores, per_subtask = influence(train, val, weights, vm["subtasks"])
    return scores, per_subtask, list(dict.fromkeys(vm["subtasks"])), weights


def score(run: Run) -> None:
    """Influence of every pool example on the target: lr-weighted cosine, shots mean, subtask max."""
    sd = run.stage("score", "scores")
    if sd.is_done() or not run.dist.is_main:
        run.dist.barrier()
        return
    sd.begin()
    scores, per_subtask, subtasks, weights = gradient_scores(run)
    save_array(sd.path / "scores.npy", scores)
    save_array(sd.path / "per_subtask.npy", per_subtask)
    write_json(sd.path / "scores.json", {"ids": [e.id for e in run.pool], "subtasks": subtasks, "checkpoint_weights": weights.tolist()})
    sd.finish(n=len(scores))
    run.dist.barrier()


def select(run: Run) -> None:
    """Write the top share of the pool by influence score."""
    sd = run.stage("select", "selection")
    if sd.is_done() or not run.dist.is_main:
        run.dist.barrier()
        return
    scores_sd = run.require("score", "scores")
    sd.begin()
    scores = np.load(scores_sd.path / "scores.npy")
    info = write_selection(sd.path, run.pool, top_fraction(scores, run.config.select.fraction), scores, "rose")
    sd.finish(n_selected=info["n_selected"], sources=info["sources"])
    run.dist.barrier()


def selected_indices(run: Run) -> list[int]:
    sd = run.require("select", "selection")
    index = {e.id: i for i, e in enumerate(run.pool)}
    return [index[row["id"]] for row in read_json(sd.path / "selection.json")["selected"]]


def finetune(run: Run) -> None:
    """LoRA-train the base model on the selection (the model whose quality the selection is judged by)."""
    sd = run.stage("finetune", "finetune")
    if sd.is_done():
        return
    chosen = selected_indices(run)
    if run.dist.is_main:
        sd.begin()
    run.dist.barrier()
    started = time.perf_counter()
    ckpts = train_lora(run.fresh_adapters(), [run.pool_encoded[i] for i in chosen], run.config.finetune, sd.path,
                       run.pad_id, run.config.seed + 1, run.dist, save_checkpoints=False, log=log.info)
    if run.dist.is_main:
        sd.finish(adapter=str(ckpts[-1].adapter.relative_to(sd.path)), n_train=len(chosen), seconds=time.perf_counter() - started)
    run.dist.barrier()


def evaluate(run: Run) -> None:
    """Held-out preference accuracy and reward margin, and golden-answer NLL, of the fine-tuned adapter."""
    sd = run.stage("evaluate", "eval")
    if sd.is_done() or not run.dist.is_main:
        run.dist.barrier()
        return
    tune = run.require("finetune", "finetune")
    sd.begin()
    run.load_adapter(tune.path / tune.manifest()["adapter"])
    budget = run.config.gradients.batch_tokens
    metrics: dict = {}
    pairs, encoded = run.heldout
    if pairs:
        metrics.update(asdict(preference_accuracy(run.model, encoded, [p.subtask for p in pairs], run.pad_id, budget, run.device)))
    tests, encoded = run.tests
    if tests:
        subtasks = [t.subtask for t in tests]
        metrics.update(asdict(golden_nll(run.model, encoded, subtasks, run.pad_id, budget, run.device)))
        with run.model.disable_adapter():
            metrics["base_golden_nll"] = golden_nll(run.model, encoded, subtasks, run.pad_id, budget, run.device).golden_nll
    write_json(sd.path / "metrics.json", metrics)
    sd.finish(**{k: v for k, v in metrics.items() if not isinstance(v, dict)})
    run.dist.barrier()


STAGES = {
    "warmup": warmup,
    "val-grads": val_grads,
    "train-grads": train_grads,
    "score": score,
    "select": select,
    "finetune": finetune,
    "evaluate": evaluate,
}
