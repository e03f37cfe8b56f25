"""Influence scores: lr-weighted cosine over checkpoints, mean over shots, max over subtasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def checkpoint_weights(mean_lrs: Sequence[float]) -> np.ndarray:
    """Each checkpoint's weight: the mean learning rate of its epoch, normalised to sum to 1."""
    w = np.asarray(mean_lrs, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError(f"checkpoint learning rates must have a positive sum, got {list(mean_lrs)}")
    return w / w.sum()


def subtask_index(subtasks: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(names in first-seen order, [M] index of each validation item's subtask)."""
    names = list(dict.fromkeys(subtasks))
    return names, np.array([names.index(s) for s in subtasks])


def aggregate(sims: np.ndarray, subtasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """[N, M] similarities to each validation item -> (scores [N], per-subtask [N, S]).

    per_subtask[n, s] is the mean over the items of subtask s; scores[n] the max over subtasks.
    """
    _, index = subtask_index(subtasks)
    member = np.zeros((len(subtasks), int(index.max()) + 1))  # [M, S] averaging matrix
    member[np.arange(len(subtasks)), index] = 1
    member /= member.sum(axis=0, keepdims=True)
    per_subtask = np.asarray(sims, np.float64) @ member
    return per_subtask.max(axis=1), per_subtask


def influence(
    train: Sequence[Sequence[np.ndarray]],
    val: Sequence[np.ndarray | None],
    weights: np.ndarray,
    subtasks: Sequence[str],
    device: torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score every training example against the target.

    train: per checkpoint, its [N, d] unit vectors as row blocks in pool order (the stage's
    shards, memory-mapped: nothing is concatenated); val: per checkpoint [M, d] unit vectors, or
    None where `train` already holds [N, M] cosines (exact scoring); weights: [C]; subtasks: [M].
    The similarity of example n and item m is sum_c w_c <train_c[n], val_c[m]>; see `aggregate`.
    Each block's products run on `device` in float32 (on a GPU, seconds for a pool that keeps a
    CPU busy for a minute); the checkpoint sum is taken in float64.
    """
    import torch  # here, not at import: selectors (and the CLI) import this module torch-free

    if not (len(train) == len(val) == len(weights)):
        raise ValueError("train, val and weights must have one entry per checkpoint")
    if len({len(blocks) for blocks in train}) != 1:
        raise ValueError("every checkpoint must have the same row blocks")
    device = device or torch.device("cpu")
    targets = [None if v is None else torch.as_tensor(np.asarray(v, np.float32), device=device) for v in val]
    sims = []
    for b in range(len(train[0])):
        total = None
        for w, blocks, v in zip(weights, train, targets):
            x = torch.tensor(blocks[b], device=device).float()  # a copy: the shards are read-only memmaps
            part = (x if v is None else x @ v.T).double() * float(w)
            total = part if total is None else total + part
        sims.append(total.cpu().numpy())
    return aggregate(np.concatenate(sims), subtasks)
