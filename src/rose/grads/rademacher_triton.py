"""The dense Rademacher projection as one fused Triton kernel (GPU; CPU only under TRITON_INTERPRET=1).

Same matrix as `project.rademacher_signs`, bit for bit: each program hashes its tile of signs in
registers and feeds them straight to the matrix units, so the D x d matrix is never written to
memory. This is what TRAK's `fast_jl` extension does for LESS, without the extension.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

GOLDEN, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


@triton.jit
def _project(x_ptr, out_ptr, B, K, N, row0, seed, golden, mix1, mix2, stride_xb, stride_split, stride_ob,
             K_PER_PROG: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n, pid_k, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    k_first = pid_k * K_PER_PROG
    for step in range(0, K_PER_PROG, BLOCK_K):  # the last split may run past K: masked
        offs_k = k_first + step + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_b[:, None] * stride_xb + offs_k[None, :],
                    mask=(offs_b[:, None] < B) & (offs_k[None, :] < K), other=0.0)
        # splitmix64 of (row * N + col), as in project.rademacher_signs
        h = (row0 + offs_k[:, None]).to(tl.uint64) * N + offs_n[None, :].to(tl.uint64)
        h = h * golden + seed
        h = (h ^ (h >> 30)) * mix1
        h = (h ^ (h >> 27)) * mix2
        h = h ^ (h >> 31)
        signs = ((h >> 40) & 1).to(tl.float32) * 2.0 - 1.0
        signs = tl.where(offs_k[:, None] < K, signs, 0.0)
        acc += tl.dot(x.to(tl.float32), signs)
    out = out_ptr + pid_k * stride_split + offs_b[:, None] * stride_ob + offs_n[None, :]
    tl.store(out, acc, mask=(offs_b[:, None] < B) & (offs_n[None, :] < N))


def rademacher_project(x: torch.Tensor, row0: int, out_dim: int, seed: int) -> torch.Tensor:
    """[B, K] @ signs(rows row0..row0+K, out_dim) -> [B, out_dim] float32 (not yet scaled by 1/sqrt(d))."""
    x = x.float().contiguous()
    batch, k = x.shape
    block_b = min(64, max(16, triton.next_power_of_2(batch)))
    block_k, block_n = 32, 128
    splits = max(1, min(16, triton.cdiv(k, block_k * 8)))
    k_per_prog = triton.cdiv(triton.cdiv(k, splits), block_k) * block_k
    splits = triton.cdiv(k, k_per_prog)
    partial = torch.empty(splits, batch, out_dim, device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(out_dim, block_n), splits, triton.cdiv(batch, block_b))
    _project[grid](x, partial, batch, k, out_dim, row0, seed, GOLDEN, MIX1, MIX2, x.stride(0), partial.stride(0),
                   partial.stride(1), K_PER_PROG=k_per_prog, BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_N=block_n)
    return partial.sum(dim=0)
