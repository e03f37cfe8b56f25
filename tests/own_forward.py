"""Test helper: response log-probs straight from a model's own forward pass, the ground truth for stored ones."""

from __future__ import annotations

import numpy as np
import torch

from rose.encoding import Encoded


def own_logp(model: torch.nn.Module, seq: Encoded) -> torch.Tensor:
    """One sequence's summed response log-prob from the model's own forward pass of it alone (full
    logits, log_softmax in float32 or wider, summed by hand), differentiable: the reference that
    gradients are held to."""
    logits = model(input_ids=torch.tensor([seq.input_ids])).logits[0]
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return sum(logp[t - 1, seq.input_ids[t]] for t in range(seq.n_prompt, len(seq)))


@torch.no_grad()
def own_logps(model: torch.nn.Module, sequences: list[Encoded]) -> np.ndarray:
    """[N] summed response log-probs, each from the model's own forward pass of that sequence alone
    (full logits, log_softmax in float64, summed by hand)."""
    out = []
    for s in sequences:
        logp = torch.log_softmax(model(input_ids=torch.tensor([s.input_ids])).logits[0].double(), dim=-1)
        out.append(sum(float(logp[t - 1, s.input_ids[t]]) for t in range(s.n_prompt, len(s))))
    return np.array(out)
