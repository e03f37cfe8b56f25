"""The stages. Each reads files from the run directory, writes its own folder, and is skipped when
its manifest is complete for the same key (see `context.Run.keys`); `context.FOLDERS` names them.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from .baselines import bm25_similarities, embedding_similarities, random_scores
from .config import GRADIENT_METHODS
from .context import Run
from .evaluate import dpo_loss, golden_nll, preference_metrics
from .formats import write_jsonl
from .grads import engine
from .grads.project import Projector, make_projector
from .grads.transform import ExactCosines, ProjectedFeatures
from .inputs import sample_indices
from .score import aggregate, checkpoint_weights, influence
from .selection import top_fraction, write_selection
from .store import StageDir, open_shards, read_json, save_array, shard_name, shard_ranges, write_json
from .train import train_lora

log = logging.getLogger("rose")


def _main_process_stage(name: str, needs: tuple[str, ...] = ()):
    """Run a stage body on the main process only, when the stage is not done yet; every process
    then meets at one barrier. The stages it `needs` must be complete before its folder is
    claimed; the body returns what goes into the manifest besides the wall time."""

    def decorate(body):
        @functools.wraps(body)
        def stage(run: Run) -> None:
            sd = run.stage(name)
            if run.dist.is_main and not sd.is_done():
                for upstream in needs:
                    run.require(upstream)
                sd.begin()
                started = time.perf_counter()
                info = body(run, sd)
                sd.finish(seconds=time.perf_counter() - started, **info)
            run.dist.barrier()

        return stage

    return decorate


def warmup(run: Run) -> None:
    """LoRA-train the base model on a random share of the pool; keep every epoch's checkpoint."""
    sd = run.stage("warmup")
    if sd.is_done():
        return
    cfg = run.config
    n = len(run.pool)
    subset = sample_indices(n, max(1, math.ceil(cfg.warmup.fraction * n)), cfg.seed + 10)
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
    return torch.from_numpy(np.load(run.require("val-grads").path / "reference_logps.npy"))


def validation_grads(run: Run, sink, reference: torch.Tensor) -> torch.Tensor:
    """[M, sink.out_dim]: the validation gradients at the loaded checkpoint, through `sink`.

    ROSE takes the DPO loss of each pair (reference = adapters off); LESS the SFT loss of the
    chosen response. Both are plain (SGD) gradients.
    """
    cfg = run.config.gradients
    pairs, encoded = run.validation_set
    out = torch.zeros(len(pairs), sink.out_dim, dtype=torch.float64)
    if run.config.select.method == "less":
        batches = engine.sft_grads(run.model, run.param_names, [c for c, _ in encoded], cfg.batch_tokens, run.device)
    else:
        batches = engine.dpo_grads(run.model, run.param_names, encoded, reference, cfg.dpo_beta, cfg.batch_tokens, run.device)
    for idx, parts in batches:
        out[idx] = sink(parts).double().cpu()
    return out


class RawGradients:
    """A sink that keeps whole gradients ([B, D]), for exact scoring against a few targets."""

    def __init__(self, dim: int) -> None:
        self.out_dim = dim

    def __call__(self, parts) -> torch.Tensor:
        return torch.cat(list(parts), dim=1)


@_main_process_stage("val-grads", needs=("warmup",))
def val_grads(run: Run, sd: StageDir) -> dict:
    """Validation gradients at every checkpoint, projected and normalised (plus base-model log-probs)."""
    cfg = run.config.gradients
    ckpts = run.checkpoints()
    pairs, encoded = run.validation_set
    run.compile_for_gradients()
    with run.model.disable_adapter():
        flat = [s for pair in encoded for s in pair]
        ref, _ = engine.sequence_logprobs(run.model, flat, cfg.batch_tokens, run.device)
    reference = ref.view(-1, 2)
    save_array(sd.path / "reference_logps.npy", reference.numpy())
    if cfg.projection != "none":  # exact scoring recomputes full validation gradients in train-grads
        sink = ProjectedFeatures(_projector(run))
        for ckpt in tqdm(ckpts, desc="validation gradients", unit="ckpt"):
            run.load_adapter(ckpt.adapter)
            save_array(sd.path / ckpt.path.name / "grads.npy", validation_grads(run, sink, reference).float().numpy())
    return {"ids": [p.id for p in pairs], "subtasks": [p.subtask for p in pairs], "checkpoints": [c.path.name for c in ckpts]}


def train_grads(run: Run) -> None:
    """Per-example SFT gradients of the pool at every checkpoint, in Adam's update direction.

    Stored as projected unit vectors [N, d], or, with gradients.projection=none, as exact cosines
    [N, M] with the full validation gradients. Written in shards, each rank taking every world-th
    shard; finished shards are kept, so a killed run resumes where it stopped.
    """
    sd = run.stage("train-grads")
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
    run.compile_for_gradients()
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
            targets = validation_grads(run, RawGradients(sum(run.segments)), reference).to(run.device)
            sink = ExactCosines(targets.split(run.segments, dim=1), moments)
        else:
            sink = ProjectedFeatures(projector, moments)
        for start, stop in todo:
            # unit vectors lose nothing that matters in float16; cosines stay float32
            out = np.zeros((stop - start, sink.out_dim), dtype=np.float32 if exact else np.float16)
            for idx, parts in engine.sft_grads(run.model, run.param_names, encoded[start:stop], cfg.batch_tokens, run.device):
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
    train_sd, val_sd = run.require("train-grads"), run.require("val-grads")
    tm, vm = train_sd.manifest(), val_sd.manifest()
    ckpts = run.checkpoints()
    weights = checkpoint_weights([c.mean_lr() for c in ckpts])
    train = [open_shards(train_sd.path / c.path.name, tm["n"], tm["shard_size"]) for c in ckpts]
    if tm["exact"]:  # the shards already hold cosines with each validation item
        val = [None] * len(ckpts)
    else:
        val = [np.load(val_sd.path / c.path.name / "grads.npy") for c in ckpts]
    scores, per_subtask = influence(train, val, weights, vm["subtasks"], run.device)
    return scores, per_subtask, list(dict.fromkeys(vm["subtasks"])), weights


@_main_process_stage("score")
def score(run: Run, sd: StageDir) -> dict:
    """Score every pool example: influence for ROSE and LESS, or a baseline's similarity."""
    method, cfg = run.config.select.method, run.config
    weights = None
    if method in GRADIENT_METHODS:
        scores, per_subtask, subtasks, weights = gradient_scores(run)
    elif method in ("random", "full"):
        scores = random_scores(len(run.pool), cfg.select.seed)
        per_subtask, subtasks = scores[:, None], ["all"]
    else:
        pairs, encoded = run.validation_set
        subtasks = list(dict.fromkeys(p.subtask for p in pairs))
        if method == "bm25":
            sims = bm25_similarities(run.pool, pairs)
        else:
            sims = embedding_similarities(run.model, run.pool_encoded, [c for c, _ in encoded], run.pad_id,
                                          cfg.gradients.batch_tokens, run.device)
        scores, per_subtask = aggregate(sims, [p.subtask for p in pairs])
    save_array(sd.path / "scores.npy", scores)
    save_array(sd.path / "per_subtask.npy", per_subtask)
    write_json(sd.path / "scores.json", {"method": method, "ids": [e.id for e in run.pool], "subtasks": subtasks,
                                         "checkpoint_weights": None if weights is None else weights.tolist()})
    return {"n": len(scores)}


@_main_process_stage("select", needs=("score",))
def select(run: Run, sd: StageDir) -> dict:
    """Write the top share of the pool by score (all of it for the full-pool baseline)."""
    scores = np.load(run.require("score").path / "scores.npy")
    method = run.config.select.method
    fraction = 1.0 if method == "full" else run.config.select.fraction
    info = write_selection(sd.path, run.pool, top_fraction(scores, fraction), scores, method)
    return {"n_selected": info["n_selected"], "sources": info["sources"]}


def selected_indices(run: Run) -> list[int]:
    sd = run.require("select")
    index = {e.id: i for i, e in enumerate(run.pool)}
    return [index[row["id"]] for row in read_json(sd.path / "selection.json")["selected"]]


def finetune(run: Run) -> None:
    """LoRA-train the base model on the selection (the model whose quality the selection is judged by)."""
    sd = run.stage("finetune")
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


@_main_process_stage("reference")
def reference(run: Run, sd: StageDir) -> dict:
    """Base-model log-probs (adapters off) of the held-out pairs and test answers, computed once."""
    with run.model.disable_adapter():
        for name, (logps, counts) in _evaluation_logprobs(run, ("heldout", "test")).items():
            save_array(sd.path / f"{name}_logps.npy", logps)
            save_array(sd.path / f"{name}_counts.npy", counts)
    return {}


def _evaluation_logprobs(run: Run, sets: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Summed response log-probs and token counts of the model as it is: held-out and validation
    pairs ([P, 2], chosen then rejected) and golden test answers ([T])."""
    budget, out = run.config.gradients.batch_tokens, {}
    encoded = {"heldout": run.heldout[1] if "heldout" in sets else [],
               "validation": run.validation_set[1] if "validation" in sets else [],
               "test": run.tests[1] if "test" in sets else []}
    for name, items in encoded.items():
        if not items:
            continue
        seqs = [s for pair in items for s in pair] if name != "test" else items
        logps, counts = engine.sequence_logprobs(run.model, seqs, budget, run.device)
        shape = (-1, 2) if name != "test" else (-1,)
        out[name] = (logps.view(*shape).double().numpy(), counts.view(*shape).numpy())
    return out


@_main_process_stage("evaluate", needs=("finetune", "reference"))
def evaluate(run: Run, sd: StageDir) -> dict:
    """Held-out preference accuracy, reward margin, length-normalised preference, validation DPO
    loss and golden-answer NLL of the fine-tuned adapter (and the judge's win rate, if enabled)."""
    tune, ref = run.require("finetune"), run.require("reference")
    run.load_adapter(tune.path / tune.manifest()["adapter"])
    base = {name: np.load(ref.path / f"{name}_logps.npy") for name in ("heldout", "test") if (ref.path / f"{name}_logps.npy").is_file()}
    with run.model.disable_adapter():
        base["validation"] = _evaluation_logprobs(run, ("validation",))["validation"][0]
    metrics: dict = {}
    for name, (logps, counts) in _evaluation_logprobs(run, ("heldout", "validation", "test")).items():
        if name == "heldout":
            metrics.update(asdict(preference_metrics(logps, base[name], counts, [p.subtask for p in run.heldout[0]])))
        elif name == "validation":
            metrics["val_dpo_loss"] = dpo_loss(logps, base[name], run.config.gradients.dpo_beta)
        else:
            subtasks = [t.subtask for t in run.tests[0]]
            metrics.update(asdict(golden_nll(logps, counts, subtasks)))
            metrics["base_golden_nll"] = golden_nll(base[name], counts, subtasks).golden_nll
    if run.config.eval.judge.enabled:
        metrics.update(_judge(run))
    write_json(sd.path / "metrics.json", metrics)
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _judge(run: Run) -> dict:
    """LLM-judge win rate of the fine-tuned model's answers against the golden answers."""
    from .judge import generate_answers, make_client, question_text, win_rate

    settings = run.config.eval.judge
    tests = run.tests[0]
    tests = [tests[i] for i in sample_indices(len(tests), settings.max_prompts, run.config.seed + 4)]
    client = make_client(settings)  # fails early, before generating, when no key is set
    answers = generate_answers(run.model, run.tokenizer, [t.prompt for t in tests], settings.max_new_tokens, run.device,
                               run.config.eval.batch_size)
    write_jsonl(run.stage("evaluate").path / "judge_answers.jsonl",
                [{"id": t.id, "answer": a, "golden": t.golden} for t, a in zip(tests, answers)])
    result = win_rate(client, settings.model, [(question_text(t.prompt), a, t.golden) for t, a in zip(tests, answers)])
    return {f"judge_{k}": v for k, v in asdict(result).items()}


STAGES = {
    "warmup": warmup,
    "val-grads": val_grads,
    "train-grads": train_grads,
    "score": score,
    "select": select,
    "reference": reference,
    "finetune": finetune,
    "evaluate": evaluate,
}
