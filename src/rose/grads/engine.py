"""Batched per-example LoRA gradients: many examples per forward/backward pass.

For a linear map y = x W^T, the gradient of a sum of per-example losses w.r.t. W, restricted to
example b, is sum_t dy[b, t]^T x[b, t] over b's tokens. Examples are packed into one row with no
padding (`encoding.pack`; attention stays within each, `attention.py`). Forward hooks on every
LoRA `Linear` (lora_A and lora_B) keep x and y; one `autograd.grad` call returns dy for all of
them at once (no .grad is written); per module, x and dy are laid out as [B, longest, ...] (the
gaps zero, so they add nothing) and one batched matmul forms every example's gradient. Examples
don't interact (no batch statistics), so row b of the result is exactly example b's gradient.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..encoding import Encoded, pack, token_packs
from .losses import dpo_losses, response_logprobs, sft_losses


class LoraTaps:
    """Forward hooks that record the input and output of each LoRA weight's Linear module."""

    def __init__(self, model: torch.nn.Module, param_names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        self.modules = []
        for name in param_names:
            owner = name.removesuffix(".weight")
            if owner == name or not isinstance(modules.get(owner), torch.nn.Linear) or modules[owner].bias is not None:
                raise ValueError(f"{name} is not the weight of a bias-free Linear; cannot take per-example gradients")
            self.modules.append(modules[owner])
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handles: list = []

    def __enter__(self) -> LoraTaps:
        self._handles = [m.register_forward_hook(self._keep) for m in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self.records.clear()

    def _keep(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.records.append((args[0], output))

    def per_example_grads(self, loss: torch.Tensor, batch: dict) -> Iterator[torch.Tensor]:
        """Per sequence of the packed batch, the gradient of `loss` (a sum over sequences), one LoRA
        weight at a time.

        Yields [B, D_k] for each LoRA weight k in parameter order; only the segment being consumed
        is materialised. Consume it fully before the next forward pass.
        """
        if len(self.records) != len(self.modules):
            raise RuntimeError(f"expected {len(self.modules)} LoRA calls in the forward pass, saw {len(self.records)}")
        inputs, outputs = zip(*self.records)
        self.records = []
        grad_outputs = torch.autograd.grad(loss, outputs)
        n, longest = batch["cu_seq_lens"].numel() - 1, batch["max_length"]
        slots = (batch["sequence_ids"][0] * longest + batch["position_ids"][0])  # token -> (sequence, position)

        def unpacked(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # [1, T, C] -> [B, longest, C]
            return t.new_zeros(n * longest, t.shape[-1], dtype=dtype).index_copy_(0, slots, t[0].to(dtype)).view(n, longest, -1)

        with torch.no_grad():
            for x, dy in zip(inputs, grad_outputs):
                # [B, L, out]^T @ [B, L, in] -> [B, out, in]: the sum over tokens, per example.
                # On GPU, bf16 operands go to the tensor cores as they are (fp32 accumulation).
                dtype = dy.dtype if dy.is_cuda else torch.promote_types(dy.dtype, torch.float32)
                g = torch.bmm(unpacked(dy, dtype).transpose(1, 2), unpacked(x, dtype)).flatten(1)
                yield g.to(torch.promote_types(g.dtype, torch.float32))


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def sft_grads(
    model: torch.nn.Module,
    param_names: Sequence[str],
    examples: Sequence[Encoded],
    batch_tokens: int,
    device: torch.device,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices into `examples`, per-example gradients of the mean response NLL, segment by segment)."""
    with LoraTaps(model, param_names) as taps:
        for idx in token_packs([len(e) for e in examples], batch_tokens):
            batch = _to(pack([examples[i] for i in idx]), device)
            loss = sft_losses(*response_logprobs(model, batch)).sum()
            yield idx, taps.per_example_grads(loss, batch)


def dpo_grads(
    model: torch.nn.Module,
    param_names: Sequence[str],
    pairs: Sequence[tuple[Encoded, Encoded]],
    reference_logps: torch.Tensor,
    beta: float,
    batch_tokens: int,
    device: torch.device,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (pair indices, each pair's DPO-loss gradient segment by segment).

    Chosen and rejected go through the network as separate sequences of one pack; a pair's gradient is
    the sum of its two sequences' gradients of the summed DPO loss. reference_logps: [M, 2].
    """
    with LoraTaps(model, param_names) as taps:
        for idx in token_packs([len(c) + len(r) for c, r in pairs], batch_tokens):
            batch = _to(pack([seq for i in idx for seq in pairs[i]]), device)  # chosen_0, rejected_0, chosen_1, ...
            logp, _ = response_logprobs(model, batch)
            ref = reference_logps[idx].to(device)
            loss = dpo_losses(logp[0::2], logp[1::2], ref[:, 0], ref[:, 1], beta).sum()
            grads = taps.per_example_grads(loss, batch)
            yield idx, (g[0::2] + g[1::2] for g in grads)


@torch.no_grad()
def sequence_logprobs(
    model: torch.nn.Module, sequences: Sequence[Encoded], batch_tokens: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """([N] summed response log-probs, [N] response token counts) without gradients."""
    logps = torch.zeros(len(sequences), dtype=torch.float64)  # sums of many tokens: kept exact for DPO margins
    counts = torch.zeros(len(sequences), dtype=torch.long)
    for idx in token_packs([len(s) for s in sequences], batch_tokens):
        logp, n = response_logprobs(model, _to(pack([sequences[i] for i in idx]), device))
        logps[idx], counts[idx] = logp.double().cpu(), n.cpu()
    return logps, counts
