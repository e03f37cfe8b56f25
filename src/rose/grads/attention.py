"""Causal attention over packed rows: many sequences in one row, each attending only to itself.

The gradient engine packs its batches (`encoding.pack`) because padding was the largest waste
left in it: 39% of an 8B engine batch's tokens, and padded tokens cost full forward and backward
passes. Packing needs attention that stops at sequence boundaries. On a CUDA device in half
precision the row goes to FlashAttention's variable-length kernel (`torch.nn.attention.varlen`,
torch >= 2.10), which does no work outside each sequence's causal triangle; elsewhere each
sequence goes through SDPA in turn, which is exact and fast enough on a CPU.

The function is registered with transformers' attention interface and switched on for one
forward pass by `packed_attention(model)`; the model's own (padded) attention is left as it was
for training and generation.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from ..errors import ConfigError

NAME = "rose_packed"


@functools.cache
def _varlen_kernel():
    """torch's FlashAttention varlen entry point and how to ask it for causal, GQA and a scale
    (its keywords changed between torch 2.10 and 2.12), or None where it does not exist."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    return varlen_attn, causal, "enable_gqa" in params, "scale" in params


def _repeat_kv(key: torch.Tensor, value: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, H_kv, D] -> [T, heads, D]: grouped-query keys and values shared out to every query head."""
    groups = heads // key.shape[1]
    return key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)


def _flash(q, k, v, cu_seq_lens, max_length, scale):
    kernel, causal, gqa, has_scale = _varlen_kernel()
    if not has_scale and scale != q.shape[-1] ** -0.5:
        return None  # this torch's kernel uses the default scale only
    extra = dict(causal, **({"scale": scale} if has_scale else {}))
    if gqa:
        extra["enable_gqa"] = True
    else:
        k, v = _repeat_kv(k, v, q.shape[1])
    q, k, v = (t.contiguous() for t in (q, k, v))
    return kernel(q, k, v, cu_seq_lens, cu_seq_lens, max_length, max_length, **extra)


def _per_sequence(q, k, v, cu_seq_lens, scale):
    k, v = _repeat_kv(k, v, q.shape[1])
    bounds = cu_seq_lens.tolist()
    out = [F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1) for t in (q, k, v)), is_causal=True, scale=scale)
           for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(out, dim=1).transpose(0, 1)


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature: query [1, H, T, D], key/value [1, H_kv, T, D] of one packed
    row, with `cu_seq_lens_q` and `max_length_q` passed down from the decoder call. Returns
    ([1, T, H, D], None)."""
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise ConfigError("model.name: packed gradient passes support full causal attention only "
                          "(this model uses a sliding window or soft-capped attention scores)")
    if dropout:
        raise ValueError("attention dropout must be off in gradient passes")
    cu_seq_lens, max_length = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, heads, D]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out = None
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _varlen_kernel() is not None:
        out = _flash(q, k, v, cu_seq_lens, max_length, scale)
    if out is None:
        out = _per_sequence(q, k, v, cu_seq_lens, scale)
    return out.unsqueeze(0), None


AttentionInterface.register(NAME, packed_attention_forward)


@contextlib.contextmanager
def packed_attention(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, the model's attention layers use `packed_attention_forward`."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
