"""Causal attention over packed rows: many sequences in one row, each attending only to itself.

The gradient engine packs its batches (`encoding.pack`) because padding was the largest waste
left in it: padded tokens cost full forward and backward passes (docs/benchmarks.md). Packing needs attention that stops at sequence boundaries. On a CUDA device in half
precision the row goes to FlashAttention's variable-length kernel (`torch.nn.attention.varlen`,
torch >= 2.10), which does no work outside each sequence's causal triangle; elsewhere, and where
that kernel cannot express the layer's attention, each sequence goes through SDPA (or explicit
scores) in turn, which is exact and fast enough on a CPU.

Each layer's own attention arguments are honoured, as transformers passes them to every
attention function: `scaling` (Granite's attention_multiplier, Gemma's query_pre_attn_scalar),
`sliding_window` (Mistral, Gemma 2/3, Cohere 2, Qwen with use_sliding_window; a window of W lets a
token see itself and the W - 1 before it, as in transformers' `sliding_window_overlay`) and
`softcap` (Gemma 2's attention-score soft-capping, c * tanh(s / c), which needs explicit scores).

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

NAME = "rose_packed"


@functools.cache
def _varlen_kernel():
    """torch's FlashAttention varlen entry point and the names of its keyword arguments, or None
    where it does not exist. Its keywords changed between torch versions: 2.10 takes `is_causal`,
    later ones `window_size=(left, right)` (which also expresses a sliding window), `scale` and
    `enable_gqa`."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def _repeat_kv(key: torch.Tensor, value: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, H_kv, D] -> [T, heads, D]: grouped-query keys and values shared out to every query head."""
    groups = heads // key.shape[1]
    return key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)


def _flash(q, k, v, cu_seq_lens, max_length, scale, window):
    """The varlen kernel on [T, heads, D] tensors, or None where this torch's kernel cannot express
    the layer (a sliding window or a non-default scale it has no keyword for)."""
    kernel, params = _varlen_kernel()
    if "window_size" in params:
        extra = {"window_size": (window - 1 if window else -1, 0)}  # (left, right): W keys including itself
    elif window is None and "is_causal" in params:
        extra = {"is_causal": True}
    else:
        return None
    if "scale" in params:
        extra["scale"] = scale
    elif scale != q.shape[-1] ** -0.5:
        return None
    if "enable_gqa" in params:
        extra["enable_gqa"] = True
    else:
        k, v = _repeat_kv(k, v, q.shape[1])
    q, k, v = (t.contiguous() for t in (q, k, v))
    return kernel(q, k, v, cu_seq_lens, cu_seq_lens, max_length, max_length, **extra)


def visible_keys(n: int, window: int | None, device: torch.device) -> torch.Tensor:
    """[n, n] bool: query i sees key j when j <= i and, with a window W, i - j < W."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return (j <= i) & (i - j < window) if window else j <= i


def _attend(q, k, v, scale, window, softcap):
    """Causal attention of one sequence, q/k/v [H, L, D] -> [H, L, D]."""
    n = q.shape[1]
    if softcap is None and (window is None or n <= window):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    visible = visible_keys(n, window, q.device)
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale)
    scores = (q @ k.transpose(1, 2)) * scale  # the same steps as transformers' eager attention
    scores = torch.tanh(scores / softcap) * softcap
    weights = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    return weights @ v


def _per_sequence(q, k, v, cu_seq_lens, scale, window, softcap):
    k, v = _repeat_kv(k, v, q.shape[1])
    bounds = cu_seq_lens.tolist()
    out = [_attend(*(t[a:b].transpose(0, 1) for t in (q, k, v)), scale, window, softcap)
           for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(out, dim=1).transpose(0, 1)


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             sliding_window=None, softcap=None, **kwargs):
    """transformers' attention signature: query [1, H, T, D], key/value [1, H_kv, T, D] of one packed
    row, with `cu_seq_lens_q` and `max_length_q` passed down from the decoder call. Returns
    ([1, T, H, D], None)."""
    if dropout:
        raise ValueError("attention dropout must be off in gradient passes")
    cu_seq_lens, max_length = kwargs["cu_seq_lens_q"], kwargs["max_length_q"]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, heads, D]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    window = sliding_window if sliding_window and max_length > sliding_window else None  # no sequence reaches past it
    out = None
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and softcap is None and _varlen_kernel() is not None:
        out = _flash(q, k, v, cu_seq_lens, max_length, scale, window)
    if out is None:
        out = _per_sequence(q, k, v, cu_seq_lens, scale, window, softcap)
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
