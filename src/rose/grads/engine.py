"""Batched per-example LoRA gradients: many examples per forward/backward pass.

For a linear map y = x W^T, the gradient of a sum of per-example losses w.r.t. W, restricted to
example b, is sum_t dy[b, t]^T x[b, t] over b's tokens. Examples are packed into one row with no
padding (`encoding.pack`; attention stays within each, `attention.py`). Forward hooks on every
LoRA `Linear` (lora_A and lora_B) keep x and y by parameter name; one `autograd.grad` call
returns dy for all of them at once (no .grad is written); per module, one grouped matrix product
over the pack's contiguous token ranges forms every example's gradient. Examples don't interact
(no batch statistics), so group b of the result is exactly example b's gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..encoding import Encoded, pack, token_packs
from .losses import ItemLoss, response_logprobs


class LoraTaps:
    """Forward hooks that record the input and output of each LoRA weight's Linear module, by name.

    Records are keyed by parameter name, so gradients come out in the order of `param_names` (the
    order of the moments and projection segments) whatever order the model calls its layers in.
    A module called twice in one forward pass (shared weights) is an error: its gradient would be
    the sum over both calls, which one record cannot give.
    """

    def __init__(self, model: torch.nn.Module, param_names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        self.modules: dict[str, torch.nn.Module] = {}
        for name in param_names:
            owner = name.removesuffix(".weight")
            if owner == name or not isinstance(modules.get(owner), torch.nn.Linear) or modules[owner].bias is not None:
                raise ValueError(f"{name} is not the weight of a bias-free Linear; cannot take per-example gradients")
            self.modules[name] = modules[owner]
        self.records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def __enter__(self) -> LoraTaps:
        self._handles = [m.register_forward_hook(functools.partial(self._keep, name)) for name, m in self.modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self.records.clear()

    def _keep(self, name: str, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        if name in self.records:
            raise RuntimeError(f"{name}: its module ran twice in one forward pass (shared weights); "
                               "per-example gradients need one call per LoRA layer")
        self.records[name] = (args[0], output)

    def per_example_grads(self, loss: torch.Tensor, batch: dict) -> Iterator[torch.Tensor]:
        """Per sequence of the packed batch, the gradient of `loss` (a sum over sequences), one LoRA
        weight at a time.

        Yields [B, D_k] for each LoRA weight k in the order of `param_names`, in the model's dtype
        (bf16 on a GPU: the grouped product accumulates in float32; consumers upcast); only the
        segment being consumed is materialised. The forward pass's records are taken at once.
        """
        missing = [name for name in self.modules if name not in self.records]
        if missing:
            raise RuntimeError(f"{len(missing)} LoRA layers did not run in the forward pass, e.g. {missing[0]}")
        records, self.records = self.records, {}
        return self._segments([records[name] for name in self.modules], loss, batch["cu_seq_lens"][1:])

    @staticmethod
    def _segments(records: list[tuple[torch.Tensor, torch.Tensor]], loss: torch.Tensor, ends: torch.Tensor) -> Iterator[torch.Tensor]:
        inputs, outputs = zip(*records)
        grad_outputs = torch.autograd.grad(loss, outputs)
        with torch.no_grad():
            for x, dy in zip(inputs, grad_outputs):
                yield per_sequence_products(dy[0], x[0], ends).flatten(1)


def per_sequence_products(dy: torch.Tensor, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """[B, out, in]: for each sequence, the sum over its tokens of dy[t]^T x[t].

    dy [T, out] and x [T, in] hold the sequences one after another, sequence b ending at ends[b]
    (int32). One grouped GEMM (`F.grouped_mm`: a CUTLASS kernel on H100-class cards in bf16, a
    loop of matmuls elsewhere) costs the real tokens only; laying the pack out as [B, longest, ...]
    for a batched matmul pays copies and padded products for every shorter sequence.
    Its layout rules (bf16/fp32, rows a multiple of 16 bytes) fail only on toy shapes or float64;
    those loop over the sequences here.
    """
    dy, x = dy.contiguous(), x.contiguous()
    if dy.dtype in (torch.bfloat16, torch.float32) and all(t.shape[1] * t.element_size() % 16 == 0 for t in (dy, x)):
        return F.grouped_mm(dy.t(), x, offs=ends)
    bounds = [0, *ends.tolist()]
    return torch.stack([dy[a:b].t() @ x[a:b] for a, b in zip(bounds, bounds[1:])])


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def per_example_grads(
    model: torch.nn.Module,
    param_names: Sequence[str],
    items: Sequence,
    loss: ItemLoss,
    batch_tokens: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[list[int], Iterator[torch.Tensor]]]:
    """Yield (indices into `items`, each item's gradient of `loss`, one LoRA weight at a time: [B, D_k]).

    An item is one sequence (`SFTLoss`) or a preference pair (`DPOLoss`: chosen and rejected are
    two sequences of the same pack, and the pair's gradient is the sum of theirs). Items are packed
    longest first into rows of at most `batch_tokens` tokens.

    `world` > 1: a model sharded over `world` processes, each calling this with its `rank` on the
    same items. Each takes every world-th pack, then repeats the last (usually smallest) pack, its results
    dropped, until all have made the same number of passes: every pass gathers the sharded layers
    from every process, in forward and in backward.
    """
    per_item = loss.sequences_per_item
    packs = token_packs([sum(len(s) for s in loss.sequences(item)) for item in items], batch_tokens)
    mine = packs[rank::world]
    padding = -(-len(packs) // world) - len(mine)
    with LoraTaps(model, param_names) as taps:
        for k, idx in enumerate(mine + packs[-1:] * padding):
            batch = _to(pack([s for i in idx for s in loss.sequences(items[i])]), device)
            grads = taps.per_example_grads(loss(*response_logprobs(model, batch), idx), batch)
            if k >= len(mine):
                next(grads)  # runs the backward pass (its first segment's product is wasted), yields nothing
            elif per_item == 1:
                yield idx, grads
            else:  # sequences of one item are adjacent: sum them, in float32 or wider
                yield idx, (g.view(len(idx), per_item, -1).to(torch.promote_types(g.dtype, torch.float32)).sum(1) for g in grads)


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
