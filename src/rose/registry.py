"""The pipeline's stages, one record each: name, folder, help text and the inputs it reads.

Torch-free, so the CLI can print help and check a run's inputs before the model stack is
imported. Everything that lists stages (the CLI, the pipeline order, preflight checks, the
folders of a run directory) derives it from `STAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import GRADIENT_METHODS


@dataclass(frozen=True)
class StageInfo:
    name: str
    folder: str  # under run_dir
    help: str
    reads: frozenset[str]  # inputs: pool, validation, heldout, tests


def _stage(name: str, folder: str, help: str, *reads: str) -> StageInfo:
    return StageInfo(name, folder, help, frozenset(reads))


STAGES: dict[str, StageInfo] = {s.name: s for s in [
    _stage("warmup", "warmup", "LoRA-train on a random share of the pool, saving every epoch's adapter, AdamW state and lrs.",
           "pool"),
    _stage("val-grads", "grads/val", "Per-pair DPO gradients of the validation preferences at each checkpoint (projected).",
           "validation"),
    _stage("train-grads", "grads/train", "Per-example SFT gradients of the pool at each checkpoint (Adam direction, projected).",
           "pool", "validation"),
    _stage("score", "scores", "Influence: lr-weighted cosine over checkpoints, mean over shots, max over subtasks.",
           "pool", "validation"),
    _stage("select", "selection", "Write the top share of the pool (selected.jsonl, in the pool's own format).", "pool"),
    _stage("reference", "reference", "Base-model log-probs of the held-out, validation and test sets (for evaluation).",
           "validation", "heldout", "tests"),
    _stage("finetune", "finetune", "LoRA-train the base model on the selection.", "pool"),
    _stage("evaluate", "eval", "Held-out preference accuracy, reward margin and golden-answer NLL of the fine-tuned model.",
           "validation", "heldout", "tests"),
]}

SCORING_STAGES = ("score", "select", "reference", "finetune", "evaluate")  # what a method without gradients runs


def stages_for(method: str) -> list[str]:
    """The stages a selection method runs: gradient methods all of them, the others from `score` on."""
    return list(STAGES) if method in GRADIENT_METHODS else list(SCORING_STAGES)
