"""The FlashAttention route of the packed attention asks torch's varlen kernel for the window
transformers means, and steps aside where the kernel cannot express it (checked on CPU with a
stand-in that follows the kernel's documented semantics; benchmarks/packed_attention_check.py
runs the real kernel on a GPU)."""

from __future__ import annotations

import torch

from rose.grads import attention

LENGTHS = [11, 3, 8]
CU = torch.tensor([0, 11, 14, 22], dtype=torch.int32)


def documented_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """torch.nn.attention.varlen.varlen_attn as its docstring defines it: query i of a sequence sees
    keys i - left .. i + right of the same sequence (-1: unbounded); [T, H, D] tensors."""
    left, right = window_size
    out = torch.empty_like(query)
    groups = query.shape[1] // key.shape[1]
    for a, b in zip(cu_seq_q.tolist(), cu_seq_q[1:].tolist()):
        i, j = torch.arange(b - a)[:, None], torch.arange(b - a)[None, :]
        seen = ((left < 0) | (j >= i - left)) & ((right < 0) | (j <= i + right))
        k, v = (t[a:b].repeat_interleave(groups, dim=1).transpose(0, 1) for t in (key, value))
        scores = (query[a:b].transpose(0, 1) @ k.transpose(1, 2)) * scale
        out[a:b] = (scores.masked_fill(~seen, float("-inf")).softmax(-1) @ v).transpose(0, 1)
    return out


def _qkv():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(22, heads, 8, generator=gen, dtype=torch.float64) for heads in (4, 2, 2))


def test_the_flash_route_asks_for_the_window_transformers_means(monkeypatch):
    """A window of W lets a token see itself and the W - 1 before it (transformers'
    sliding_window_overlay, which tests/test_families.py holds the per-sequence path to)."""
    monkeypatch.setattr(attention, "_varlen_kernel", lambda: (documented_varlen, frozenset({"window_size", "scale", "enable_gqa"})))
    q, k, v = _qkv()
    for window in (4, None):
        got = attention._flash(q, k, v, CU, max(LENGTHS), 0.3, window)
        want = attention._per_sequence(q, k, v, CU, 0.3, window, None)
        assert torch.allclose(got, want, atol=1e-12), window


def test_a_kernel_without_window_size_serves_only_global_layers(monkeypatch):
    """torch 2.10's kernel takes is_causal and no window: windowed layers go the per-sequence way."""
    def causal_only(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, scale=None):
        return documented_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale,
                                 window_size=(-1, 0) if is_causal else (-1, -1))

    monkeypatch.setattr(attention, "_varlen_kernel", lambda: (causal_only, frozenset({"is_causal", "scale"})))
    q, k, v = _qkv()
    assert attention._flash(q, k, v, CU, max(LENGTHS), 0.3, 4) is None
    got = attention._flash(q, k, v, CU, max(LENGTHS), 0.3, None)
    assert torch.allclose(got, attention._per_sequence(q, k, v, CU, 0.3, None, None), atol=1e-12)
