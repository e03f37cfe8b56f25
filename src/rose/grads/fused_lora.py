"""LoRA layers with the adapter's scale and its add folded into one GEMM.

PEFT's LoRA Linear computes base(x) + B(A(dropout(x))) * scaling: besides the two small matrix
products, a multiply and an add over the layer's whole [tokens, out] output in forward, and the
multiply again in backward. On an 8B model those are about half of the element-wise kernel time
of a gradient pass (docs/benchmarks.md). Here the LoRA term goes through
`torch.addmm(base, A x, B^T, alpha=scaling)`, whose GEMM adds and scales in its epilogue, and the
backward's multiply falls on the [tokens, r] side.

`fused_lora(model, record)` switches every plain LoRA layer (one active adapter, no DoRA or other
variant, not merged) to this forward for the duration of a block; a layer in any other state runs
PEFT's own forward. `record(layer, x, h, base, scaling)` is told, per call, A's input x, its output
h and the base layer's output, whose gradient is the layer output's (B's output gradient is
scaling x that, `engine.LoraTaps`). The base output stands in for the layer's output because a
model may change that output in place (OLMo's and OLMoE's clip_qkv clamp it), after which
autograd gives the gradient of the changed tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer

Record = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, float], None]


def plain_adapter(layer: torch.nn.Module) -> str | None:
    """The adapter a LoRA layer would apply as plain LoRA now, or None if PEFT's forward must run."""
    if not isinstance(layer, LoraLayer) or layer.disable_adapters or layer.merged:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return None
    a, b = layer.lora_A[active[0]], layer.lora_B[active[0]]
    return active[0] if isinstance(a, torch.nn.Linear) and isinstance(b, torch.nn.Linear) and a.bias is None and b.bias is None else None


def _fused_forward(layer: torch.nn.Module, peft_forward: Callable, record: Record | None) -> Callable:
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = plain_adapter(layer)
        if adapter is None or kwargs.get("adapter_names") is not None:  # a mixed batch of adapters: PEFT's own path
            return peft_forward(x, *args, **kwargs)
        kwargs.pop("adapter_names", None)
        base = layer.base_layer(x, *args, **kwargs)
        if record is not None and torch.is_grad_enabled() and not base.requires_grad:
            base.requires_grad_(True)  # the first layer's input needs no gradient, but its LoRA weights do
        a, b, scaling = layer.lora_A[adapter], layer.lora_B[adapter], layer.scaling[adapter]
        x = layer.lora_dropout[adapter](layer._cast_input_dtype(x, a.weight.dtype))
        h = F.linear(x, a.weight)
        if torch.is_autocast_enabled(base.device.type) or h.dtype == base.dtype == b.weight.dtype:
            out = torch.addmm(base.flatten(0, -2), h.flatten(0, -2), b.weight.t(), alpha=scaling).view(base.shape)
        else:  # mixed dtypes outside autocast: PEFT's own arithmetic (type promotion, then back)
            out = base + F.linear(h, b.weight) * scaling
        if record is not None:
            record(layer, x, h, base, scaling)
        return out.to(base.dtype)

    return forward


@contextlib.contextmanager
def fused_lora(model: torch.nn.Module, record: Record | None = None) -> Iterator[list[torch.nn.Module]]:
    """Within the block, every LoRA layer of `model` runs the fused forward; yields the layers."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    before = [layer.__dict__.get("forward") for layer in layers]  # a forward set on the instance: kept underneath
    for layer in layers:
        layer.forward = _fused_forward(layer, layer.forward, record)
    try:
        yield layers
    finally:
        for layer, forward in zip(layers, before):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
