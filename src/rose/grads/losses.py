"""Per-example losses on response tokens: SFT for the pool, DPO for the target's preference pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..encoding import IGNORE


def response_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's response tokens, and their count.

    batch: input_ids, attention_mask, labels [B, T] (labels IGNORE outside the response).
    Returns (logp_sum [B] float32, n_tokens [B]). Logits are only computed from the first response
    position on, which skips most of the vocabulary-sized work for long prompts.
    """
    labels = batch["labels"]
    first = max(1, int((labels != IGNORE).int().argmax(dim=1).min()))  # earliest response token
    keep = labels.shape[1] - first + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    logits = logits[:, :-1]  # [B, T-first, V]: position t predicts token t+1
    logits = logits.float() if logits.dtype.itemsize < 4 else logits
    targets = labels[:, first:]  # [B, T-first]
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    mask = targets != IGNORE
    return -(nll.view_as(targets) * mask).sum(dim=1), mask.sum(dim=1)


def sft_losses(logp_sum: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """[B] mean negative log-likelihood over each example's response tokens."""
    return -logp_sum / n_tokens.clamp(min=1)


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """[B] -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), log-probs summed over the response."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin)
