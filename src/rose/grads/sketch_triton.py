"""The Adam direction and the sparse sketch as one Triton kernel (GPU; CPU only under TRITON_INTERPRET=1).

Same values as `adam_direction` followed by `SparseProjector.project`, up to summation order: each program
owns a block of buckets of a few examples, walks the segment's chunks in order, and for each reads
the chunk's table entries and moments once, the examples' coordinates for its buckets, turns them
into the Adam direction in registers and adds them with their signs. Every gradient value is read once, in its own dtype, and nothing
of gradient size is written. Torch ops (or `torch.compile`, which materialised the gathered
values) read the per-example gradients about a dozen times (docs/benchmarks.md has the
measurements). A chunk spans d coordinates, so one program's reads stay inside
a d-wide window of the row that the L2 cache holds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
import triton.testing

from .adam import AdamMoments

#: Rows (examples) per program and buckets per row: a program reads its chunk of the table (order,
#: signs) and of Adam's moments once for all its rows, and more rows mean fewer programs to spread
#: over the GPU's multiprocessors; which balance is fastest depends on the card, the segment's size
#: and the number of examples, so each (segment width, sketch width, batch rounded up to a power of
#: two) picks its own on first use: on an H200 the best shape for 4 examples takes 1.6x the best
#: time at 32 (`benchmarks/sketch_shapes.py`). (1, 1024) reads the table once per example, as the
#: kernel first did: the others must beat it to be chosen. The gathers are what the kernel waits on
#: (a 2-byte value per 32-byte sector): the wide blocks (2048, 4096) let fewer programs share each
#: chunk's d-wide window of a row, so the window leaves L2 fewer times.
SHAPES = [(1, 1024, 4), (1, 256, 4), (2, 512, 4), (4, 256, 4), (4, 512, 8), (8, 256, 8), (16, 128, 4),
          (1, 2048, 8), (2, 2048, 8), (4, 1024, 8), (1, 4096, 8)]


@triton.jit
def _adam_sketch(g_ptr, m_ptr, v_ptr, order_ptr, signs_ptr, out_ptr, B, B_CLASS, D, d, stride_g, stride_out, beta1, beta2, eps,
                 CHUNKS: tl.constexpr, ADAM: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    buckets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live, rows_live = buckets < d, rows < B
    acc = tl.zeros((ROWS, BLOCK), dtype=tl.float32)
    for k in range(CHUNKS):
        idx = tl.load(order_ptr + k * d + buckets, mask=live, other=0)
        real = live & (idx < D)  # ids past the segment are padding: zero
        sign = tl.load(signs_ptr + k * d + buckets, mask=live, other=0.0)
        x = tl.load(g_ptr + rows[:, None] * stride_g + idx[None, :], mask=rows_live[:, None] & real[None, :],
                    other=0.0).to(tl.float32)
        if ADAM:
            m = beta1 * tl.load(m_ptr + idx, mask=real, other=0.0)[None, :] + (1 - beta1) * x
            v = beta2 * tl.load(v_ptr + idx, mask=real, other=0.0)[None, :] + (1 - beta2) * x * x
            x = m / tl.sqrt(v + eps)
        acc += sign[None, :] * x
    tl.store(out_ptr + rows[:, None] * stride_out + buckets[None, :], acc, mask=rows_live[:, None] & live[None, :])


def _quick_bench(kernel_call, quantiles):
    """Time one candidate shape for 20 ms after 5 ms of warm-up (Triton's default is 100 + 25): a
    call takes 20-700 us, so that is still 30+ runs, and an 8B model's eight keys were 19 s of
    tuning at the start of every process (H200)."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


#: Tuned once per key and kept in Triton's cache folder (`cache_results`), so later processes on the
#: same machine (a stage run on its own, a resumed run, `rose compare`'s workers) skip the tuning.
_tuned_adam_sketch = triton.autotune(
    configs=[triton.Config({"ROWS": rows, "BLOCK": block}, num_warps=warps) for rows, block, warps in SHAPES],
    key=["B_CLASS", "D", "d", "ADAM"], do_bench=_quick_bench, cache_results=True)(_adam_sketch)


def adam_sketch(g: torch.Tensor, order: torch.Tensor, signs: torch.Tensor, per_bucket: int,
                adam: AdamMoments | None = None, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    """[B, D] -> [B, d] float32: the sparse sketch of g, or of its Adam direction, with a
    SparseProjector segment's table (`SparseProjector.table`). `shape`: one of SHAPES instead of the
    tuned choice (Triton's CPU interpreter, which tests every shape, cannot time them)."""
    g = g.contiguous()
    batch, width = g.shape
    d = order.numel() // per_bucket
    out = torch.empty(batch, d, device=g.device, dtype=torch.float32)
    m, v, beta1, beta2, eps = (adam.exp_avg, adam.exp_avg_sq, adam.beta1, adam.beta2, adam.eps) if adam is not None else (g, g, 0.0, 0.0, 0.0)
    grid = lambda meta: (triton.cdiv(batch, meta["ROWS"]), triton.cdiv(d, meta["BLOCK"]))  # noqa: E731 - Triton's grid idiom
    batch_class = 1 << max(batch - 1, 0).bit_length()  # the autotuner's key only: 3 -> 4, 32 -> 32, 33 -> 64
    args = (g, m, v, order, signs, out, batch, batch_class, width, d, g.stride(0), out.stride(0), beta1, beta2, eps)
    if shape is None:
        _tuned_adam_sketch[grid](*args, CHUNKS=per_bucket, ADAM=adam is not None)
    else:
        rows, block, warps = shape
        _adam_sketch[grid](*args, CHUNKS=per_bucket, ADAM=adam is not None, ROWS=rows, BLOCK=block, num_warps=warps)
    return out
