"""Evaluation metrics of a fine-tuned adapter, computed from response log-probabilities.

The implicit reward of a response is log pi_ft(y|x) - log pi_base(y|x), with pi_base the same
network with its adapter switched off. A held-out pair counts as right when the chosen response's
reward beats the rejected one's (a tie counts half). Functions here take the log-probs; the
evaluate stage computes them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PreferenceResult:
    heldout_pref_acc: float  # implicit-reward accuracy
    reward_margin: float  # mean (reward chosen - reward rejected)
    length_norm_pref_acc: float  # the tuned model's own per-token log-prob prefers the chosen response
    n_pairs: int
    per_subtask_acc: dict[str, float]


@dataclass(frozen=True)
class NllResult:
    golden_nll: float
    n_prompts: int
    n_tokens: int
    per_subtask_nll: dict[str, float]


def _right(margin: np.ndarray) -> np.ndarray:
    return np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))


def reward_margins(tuned: np.ndarray, base: np.ndarray) -> np.ndarray:
    """[P] implicit reward of the chosen response minus that of the rejected one."""
    reward = np.asarray(tuned, np.float64) - np.asarray(base, np.float64)
    return reward[:, 0] - reward[:, 1]


def pair_correctness(tuned: np.ndarray, base: np.ndarray) -> np.ndarray:
    """[P] per held-out pair: 1 when the tuned model prefers the chosen response, 0.5 a tie, else 0.
    Stored by the evaluate stage, so that `rose compare` can bootstrap differences pair by pair."""
    return _right(reward_margins(tuned, base))


def preference_metrics(tuned: np.ndarray, base: np.ndarray, counts: np.ndarray, subtasks: Sequence[str]) -> PreferenceResult:
    """tuned, base: [P, 2] summed log-probs of (chosen, rejected); counts: [P, 2] response tokens."""
    margin = reward_margins(tuned, base)
    right = _right(margin)
    per_token = np.asarray(tuned, np.float64) / np.maximum(counts, 1)
    groups: dict[str, list[float]] = defaultdict(list)
    for s, r in zip(subtasks, right):
        groups[s].append(r)
    return PreferenceResult(float(right.mean()), float(margin.mean()), float(_right(per_token[:, 0] - per_token[:, 1]).mean()),
                            len(right), {s: float(np.mean(v)) for s, v in groups.items()})


def dpo_loss(tuned: np.ndarray, base: np.ndarray, beta: float) -> float:
    """Mean DPO loss of the tuned model (reference = base) on [P, 2] (chosen, rejected) log-probs."""
    margin = (tuned[:, 0] - base[:, 0]) - (tuned[:, 1] - base[:, 1])
    return float(np.mean(np.logaddexp(0.0, -beta * np.asarray(margin, np.float64))))


def golden_nll(logps: np.ndarray, counts: np.ndarray, subtasks: Sequence[str]) -> NllResult:
    """Negative log-likelihood per golden-answer token, over all prompts and per subtask."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for s, lp, n in zip(subtasks, np.asarray(logps, np.float64), counts):
        sums[s][0] -= lp
        sums[s][1] += int(n)
    tokens = int(np.sum(counts))
    return NllResult(float(-np.sum(logps) / max(1, tokens)), len(logps), tokens, {s: v[0] / max(1, v[1]) for s, v in sums.items()})
