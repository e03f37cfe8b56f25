"""Test helper: a transformers model that really computes in float64, for tests of float64 exactness.

A Llama loaded in float64 is not float64 throughout: `LlamaRMSNorm.forward` casts its input to
float32 (`hidden_states.to(torch.float32)`) and `LlamaRotaryEmbedding.forward` forms cos/sin in
float32. Two kernel paths that agree to 1e-16 in float64 (packed vs padded attention, the
different GEMM blockings oneDNN/MKL pick for different row counts on AVX-512) then differ
wherever the float32 rounding falls on either side, and the difference surfaces as ~6e-8
relative error: a float64 test that passes on one CPU and fails on another. Tests that assert
float64 exactness use `truly_float64` on every model they compare, so they test our code, not
which float32 roundings a CPU happens to hit.
"""

from __future__ import annotations

import types

import torch


def _rms_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm (x / rms(x) * weight) in the input's own dtype."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rotary(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's rotary cos/sin (same inverse frequencies and scaling) in x's dtype."""
    freqs = position_ids[..., None].to(x.dtype) * self.inv_freq.to(x.device, x.dtype)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


FLOAT64_FORWARDS = {"RMSNorm": _rms_norm, "RotaryEmbedding": _rotary}  # by module class name suffix


def truly_float64(model: torch.nn.Module) -> torch.nn.Module:
    """Give every RMSNorm and rotary-embedding module of a float64 model a forward that stays in
    float64 (in place; returns the model). Fails if the model is not float64 or has neither."""
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float64}:
        raise ValueError(f"model is not float64: {dtypes}")
    replaced = 0
    for module in model.modules():
        for suffix, forward in FLOAT64_FORWARDS.items():
            if type(module).__name__.endswith(suffix):
                module.forward = types.MethodType(forward, module)
                replaced += 1
    if not replaced:
        raise ValueError(f"no RMSNorm or rotary-embedding module in {type(model).__name__}")
    return model
