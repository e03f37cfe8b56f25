"""Evaluate a fine-tuned adapter on the target task: held-out preference accuracy, reward margin, NLL.

The implicit reward of a response is log pi_ft(y|x) - log pi_base(y|x), with pi_base the same
network with its adapter switched off. A pair counts as right when the chosen response's reward
beats the rejected one's (a tie counts half).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from peft import PeftModel

from .encoding import Encoded
from .grads.engine import sequence_logprobs


@dataclass(frozen=True)
class PreferenceResult:
    heldout_pref_acc: float
    reward_margin: float
    n_pairs: int
    per_subtask_acc: dict[str, float]


@dataclass(frozen=True)
class NllResult:
    golden_nll: float
    n_prompts: int
    n_tokens: int
    per_subtask_nll: dict[str, float]


def _logps(model: PeftModel, seqs: Sequence[Encoded], pad_id: int, batch_tokens: int, device: torch.device, adapter: bool):
    if adapter:
        return sequence_logprobs(model, seqs, pad_id, batch_tokens, device)
    with model.disable_adapter():
        return sequence_logprobs(model, seqs, pad_id, batch_tokens, device)


def preference_accuracy(
    model: PeftModel,
    pairs: Sequence[tuple[Encoded, Encoded]],
    subtasks: Sequence[str],
    pad_id: int,
    batch_tokens: int,
    device: torch.device,
) -> PreferenceResult:
    seqs = [s for pair in pairs for s in pair]
    tuned, _ = _logps(model, seqs, pad_id, batch_tokens, device, adapter=True)
    base, _ = _logps(model, seqs, pad_id, batch_tokens, device, adapter=False)
    reward = (tuned - base).double().view(-1, 2).numpy()
    margin = reward[:, 0] - reward[:, 1]
    right = np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))
    groups: dict[str, list[float]] = defaultdict(list)
    for s, r in zip(subtasks, right):
        groups[s].append(r)
    return PreferenceResult(float(right.mean()), float(margin.mean()), len(pairs), {s: float(np.mean(v)) for s, v in groups.items()})


def golden_nll(
    model: torch.nn.Module, tests: Sequence[Encoded], subtasks: Sequence[str], pad_id: int, batch_tokens: int, device: torch.device
) -> NllResult:
    """Negative log-likelihood per golden-answer token of `model` as it is, over all prompts and per subtask."""
    logp, count = sequence_logprobs(model, tests, pad_id, batch_tokens, device)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for s, lp, n in zip(subtasks, logp.tolist(), count.tolist()):
        sums[s][0] -= lp
        sums[s][1] += n
    tokens = int(count.sum())
    return NllResult(float(-logp.sum() / max(1, tokens)), len(tests), tokens, {s: v[0] / max(1, v[1]) for s, v in sums.items()})

