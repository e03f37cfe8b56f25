"""The Adam direction and the sparse sketch as one Triton kernel (GPU; CPU only under TRITON_INTERPRET=1).

Same values as `adam_direction` followed by `SparseProjector.project`, up to summation order: each program
owns a block of buckets of one example, walks the segment's chunks in order, and for each reads
the chunk's coordinates for its buckets, turns them into the Adam direction in registers and
adds them with their signs. Every gradient value is read once, in its own dtype, and nothing
of gradient size is written. Torch ops (or `torch.compile`, which materialised the gathered
values) read the per-example gradients about a dozen times (docs/benchmarks.md has the
measurements). A chunk spans d coordinates, so one program's reads stay inside
a d-wide window of the row that the L2 cache holds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .adam import AdamMoments


@triton.jit
def _adam_sketch(g_ptr, m_ptr, v_ptr, order_ptr, signs_ptr, out_ptr, D, d, stride_g, stride_out, beta1, beta2, eps,
                 CHUNKS: tl.constexpr, ADAM: tl.constexpr, BLOCK: tl.constexpr):
    row, block = tl.program_id(0), tl.program_id(1)
    buckets = block * BLOCK + tl.arange(0, BLOCK)
    live = buckets < d
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(CHUNKS):
        idx = tl.load(order_ptr + k * d + buckets, mask=live, other=0)
        real = live & (idx < D)  # ids past the segment are padding: zero
        x = tl.load(g_ptr + row * stride_g + idx, mask=real, other=0.0).to(tl.float32)
        if ADAM:
            m = beta1 * tl.load(m_ptr + idx, mask=real, other=0.0) + (1 - beta1) * x
            v = beta2 * tl.load(v_ptr + idx, mask=real, other=0.0) + (1 - beta2) * x * x
            x = m / tl.sqrt(v + eps)
        acc += tl.load(signs_ptr + k * d + buckets, mask=live, other=0.0) * x
    tl.store(out_ptr + row * stride_out + buckets, acc, mask=live)


def adam_sketch(g: torch.Tensor, order: torch.Tensor, signs: torch.Tensor, per_bucket: int,
                adam: AdamMoments | None = None) -> torch.Tensor:
    """[B, D] -> [B, d] float32: the sparse sketch of g, or of its Adam direction, with a
    SparseProjector segment's table (`SparseProjector.table`)."""
    g = g.contiguous()
    batch, width = g.shape
    d = order.numel() // per_bucket
    out = torch.empty(batch, d, device=g.device, dtype=torch.float32)
    m, v, beta1, beta2, eps = (adam.exp_avg, adam.exp_avg_sq, adam.beta1, adam.beta2, adam.eps) if adam is not None else (g, g, 0.0, 0.0, 0.0)
    block = 1024
    _adam_sketch[(batch, triton.cdiv(d, block))](g, m, v, order, signs, out, width, d, g.stride(0), out.stride(0), beta1, beta2, eps,
                                                 CHUNKS=per_bucket, ADAM=adam is not None, BLOCK=block)
    return out
