"""Per-example gradients the plain way: one example (or pair) per backward pass.

Slow but obviously right: the oracle the batched engine (`engine.py`) is tested against, built
only from the model's own forward pass and autograd.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..encoding import Encoded, collate
from .losses import dpo_losses, response_logprobs, sft_losses


def flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """[D] the parameters' .grad, concatenated in order (zeros where a parameter got none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def _backward(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    for p in params:
        p.grad = None
    loss.backward()
    return flat_grad(params)


def sft_grads(
    model: torch.nn.Module, params: Sequence[torch.nn.Parameter], examples: Sequence[Encoded], pad_id: int
) -> Iterator[torch.Tensor]:
    """Yield each example's [D] gradient of its mean response-token NLL."""
    device = params[0].device
    for ex in examples:
        batch = {k: v.to(device) for k, v in collate([ex], pad_id).items()}
        yield _backward(model, params, sft_losses(*response_logprobs(model, batch)).sum())


def dpo_grads(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    pairs: Sequence[tuple[Encoded, Encoded]],
    reference_logps: torch.Tensor,
    beta: float,
    pad_id: int,
) -> Iterator[torch.Tensor]:
    """Yield each pair's [D] DPO-loss gradient; reference_logps [M, 2] = (chosen, rejected) sums."""
    device = params[0].device
    for (chosen, rejected), ref in zip(pairs, reference_logps):
        batch = {k: v.to(device) for k, v in collate([chosen, rejected], pad_id).items()}
        logp, _ = response_logprobs(model, batch)
        loss = dpo_losses(logp[0], logp[1], ref[0].to(device), ref[1].to(device), beta)
        yield _backward(model, params, loss)
