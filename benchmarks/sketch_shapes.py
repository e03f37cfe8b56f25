"""Time the fused Adam-direction + sparse-sketch kernel in each of its shapes, per batch size.

The kernel's autotuner keeps one shape per key; this shows whether the best shape depends on how
many examples a call holds (a pack of the engine holds 20-200), i.e. whether the batch belongs in
the key. Llama-3.1-8B's LoRA segment widths at r=128; prints a table and writes JSON.

    PYTHONPATH=src python benchmarks/sketch_shapes.py --out sketch_shapes.json

`--tables permuted grouped` also times a candidate table, `grouped`: each chunk's permutation
moves whole groups of 16 coordinates (one 32-byte sector of bf16) to groups of 16 buckets, with a
random XOR inside each group. Sixteen neighbouring buckets then read one sector instead of
sixteen, where the kernel waits on scattered 2-byte reads today. Every pair of coordinates
in different chunks still shares a bucket with probability 1/d and has independent signs, so inner
products keep the same expected squared error; only the error's higher moments change (a
collision of two groups is 16 collisions at once). The kernel is the same; only the table differs.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import partial

import torch
import triton.testing

from rose.grads.adam import AdamMoments
from rose.grads.project import SparseProjector
from rose.grads.sketch_triton import SHAPES, adam_sketch


class GroupedSparseProjector(SparseProjector):
    """`SparseProjector` with the candidate table: each chunk permuted in groups of 16 coordinates,
    a random XOR inside each group (same per-segment seeds, same signs' distribution)."""

    @staticmethod
    def chunk_order(d: int, gen: torch.Generator) -> torch.Tensor:
        group = math.gcd(d, 16)
        groups, masks = torch.randperm(d // group, generator=gen), torch.randint(0, group, (d // group,), generator=gen)
        return (groups[:, None] * group + (torch.arange(group)[None, :] ^ masks[:, None])).flatten()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[524288, 131072],
                        help="segment widths (LoRA matrix sizes); default: 8B q/o A and B (4096 x 128), k/v B (1024 x 128)")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 32, 64, 128])
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--tables", nargs="+", default=["permuted"], choices=["permuted", "grouped"],
                        help="permuted: the projector's table; grouped: the candidate with 16-coordinate groups")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    projector, grouped = SparseProjector(args.widths, args.dim, 0), GroupedSparseProjector(args.widths, args.dim, 0)
    rows = []
    for k, width in enumerate(args.widths):
        order, signs, per_bucket = projector.table(k, device)
        orders = {"permuted": order, "grouped": grouped.table(k, device)[0]}
        adam = AdamMoments(torch.rand(width, device=device) * 1e-3, torch.rand(width, device=device) * 1e-6, 0.9, 0.999, 1e-8)
        for batch in args.batches:
            g = torch.randn(batch, width, device=device, dtype=torch.bfloat16) * 1e-3
            for table in args.tables:
                times = {f"{r}x{b}/{w}": triton.testing.do_bench(partial(adam_sketch, g, orders[table], signs, per_bucket, adam, shape=(r, b, w)))
                         for r, b, w in SHAPES}
                best = min(times, key=times.get)
                rows.append({"table": table, "width": width, "batch": batch, "ms": times, "best": best,
                             "best_over_first": times[best] / times[next(iter(times))]})
                print(f"{table:8s} width {width:7d} batch {batch:4d}  best {best:10s} {times[best] * 1e3:8.1f} us   "
                      + "  ".join(f"{s} {t * 1e3:.0f}" for s, t in times.items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"card": torch.cuda.get_device_name(), "torch": torch.__version__, "dim": args.dim, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
