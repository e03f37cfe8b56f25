"""Influence scores: weighted cosines over checkpoints, then over the validation pairs and subtasks.

`similarities` gives every pool example's weighted cosine with every validation pair [N, M];
`aggregate` turns those into per-subtask scores and one score per example. The paper's ROSE:
weights = each checkpoint's mean learning rate, mean over a subtask's pairs, max over subtasks.
"""

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


def pair_weights(rule: str, mean_lrs: Sequence[float], n_pairs: int, dpo_weights: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """[C, M] the weight of checkpoint c for validation pair m.

    lr: the checkpoint's normalised mean learning rate, the same for every pair (the paper's);
    last: the last checkpoint alone; lr_dpo: lr times the pair's DPO sigmoid weight at that
    checkpoint ([C] arrays of [M]), which is the size of the pair's DPO gradient that the cosine
    throws away: a pair the checkpoint already ranks right by far counts less there. Scaled so
    that a pair's weights sum to 1 on average over the pairs, as with lr.
    """
    n = len(mean_lrs)
    if rule == "last":
        return np.repeat(np.eye(n)[-1][:, None], n_pairs, axis=1)
    lr = np.repeat(checkpoint_weights(mean_lrs)[:, None], n_pairs, axis=1)
    if rule == "lr":
        return lr
    if rule != "lr_dpo":
        raise ValueError(f"unknown checkpoint weighting {rule!r}")
    if dpo_weights is None or len(dpo_weights) != n:
        raise ValueError("lr_dpo needs each checkpoint's DPO sigmoid weights")
    w = lr * np.stack([np.asarray(d, np.float64) for d in dpo_weights])
    return w / w.sum(axis=0).mean()


def subspace(val: np.ndarray, rank: int) -> np.ndarray:
    """[d, k] the top-k right singular vectors of the validation features [M, d] (k = min(rank, M)):
    the subspace GIST projects both sides onto before the cosine (Min et al. 2026), here taken of
    the projected features, whose inner products the sketch preserves."""
    _, _, vt = np.linalg.svd(np.asarray(val, np.float64), full_matrices=False)
    return vt[: min(rank, vt.shape[0])].T


def subtask_index(subtasks: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(names in first-seen order, [M] index of each validation item's subtask)."""
    names = list(dict.fromkeys(subtasks))
    return names, np.array([names.index(s) for s in subtasks])


def aggregate(sims: np.ndarray, subtasks: Sequence[str], over_shots: str = "mean", over_subtasks: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """[N, M] similarities to each validation item -> (scores [N], per-subtask [N, S]).

    per_subtask[n, s] is the mean (or max) over the items of subtask s; scores[n] the max (or
    mean) over subtasks.
    """
    names, index = subtask_index(subtasks)
    sims = np.asarray(sims, np.float64)
    if over_shots == "mean":
        member = np.zeros((len(subtasks), len(names)))  # [M, S] averaging matrix
        member[np.arange(len(subtasks)), index] = 1
        per_subtask = sims @ (member / member.sum(axis=0, keepdims=True))
    elif over_shots == "max":
        per_subtask = np.stack([sims[:, index == s].max(axis=1) for s in range(len(names))], axis=1)
    else:
        raise ValueError(f"unknown aggregation over shots {over_shots!r}")
    if over_subtasks not in ("max", "mean"):
        raise ValueError(f"unknown aggregation over subtasks {over_subtasks!r}")
    return (per_subtask.max(axis=1) if over_subtasks == "max" else per_subtask.mean(axis=1)), per_subtask


def similarities(
    train: Sequence[Sequence[np.ndarray]],
    val: Sequence[np.ndarray],
    weights: np.ndarray,
    device: torch.device | None = None,
    bases: Sequence[np.ndarray] | None = None,
    row_max: list[np.ndarray] | None = None,
) -> np.ndarray:
    """[N, M] sum over checkpoints c of weights[c, m] <train_c[n], val_c[m]>.

    train: per checkpoint, its [N, d] unit vectors as row blocks in pool order (the stage's
    shards, memory-mapped: nothing is concatenated); val: per checkpoint [M, d] (unit vectors, or
    any linear map of the stored rows: with exact scoring the shards hold [N, M'] cosines and val
    is [M, M'], e.g. the identity); weights: [C, M] (`pair_weights`); bases: per checkpoint a
    [d, k] orthonormal basis (`subspace`) that both sides are projected onto and renormalised in
    first, or None. Each block's products run on `device` in float32 (on a GPU, seconds for a
    pool that keeps a CPU busy for a minute); the checkpoint sum is taken in float64. `row_max`, if
    given, receives per checkpoint the [N] largest |feature| of each row, from the same read (NaN
    or inf for a row with either, 0 for an all-zero one: `numerics.pool_rows_to_drop` reads it).
    """
    import torch  # here, not at import: selectors (and the CLI) import this module torch-free
    import torch.nn.functional as F

    weights = np.asarray(weights, np.float64)
    if not (len(train) == len(val) == len(weights)) or (bases is not None and len(bases) != len(train)):
        raise ValueError("train, val, weights (and bases) must have one entry per checkpoint")
    if len({len(blocks) for blocks in train}) != 1:
        raise ValueError("every checkpoint must have the same row blocks")
    device = device or torch.device("cpu")
    basis = [None] * len(val) if bases is None else [torch.as_tensor(np.asarray(b, np.float32), device=device) for b in bases]
    targets = [torch.as_tensor(np.asarray(v, np.float32), device=device) for v in val]
    targets = [v if b is None else F.normalize(v @ b, dim=1) for v, b in zip(targets, basis)]
    sims, maxima = [], [[] for _ in train]
    for i in range(len(train[0])):
        total = None
        for w, blocks, v, b, m in zip(weights, train, targets, basis, maxima):
            x = torch.tensor(blocks[i], device=device).float()  # a copy: the shards are read-only memmaps
            if row_max is not None:
                m.append(x.abs().amax(dim=1).cpu().numpy())  # amax keeps NaN
            if b is not None:
                x = F.normalize(x @ b, dim=1)
            part = (x @ v.T).double() * torch.as_tensor(w, device=device)
            total = part if total is None else total + part
        sims.append(total.cpu().numpy())
    if row_max is not None:
        row_max.extend(np.concatenate(m) for m in maxima)
    return np.concatenate(sims)
