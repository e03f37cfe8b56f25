"""Time the fused Adam-direction + sparse-sketch kernel in each of its shapes, per batch size.

The kernel's autotuner keeps one shape per key; this shows whether the best shape depends on how
many examples a call holds (a pack of the engine holds 20-200), i.e. whether the batch belongs in
the key. Llama-3.1-8B's LoRA segment widths at r=128; prints a table and writes JSON.

    PYTHONPATH=src python benchmarks/sketch_shapes.py --out sketch_shapes.json
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
import triton.testing

from rose.grads.adam import AdamMoments
from rose.grads.project import SparseProjector
from rose.grads.sketch_triton import SHAPES, adam_sketch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[524288, 131072],
                        help="segment widths (LoRA matrix sizes); default: 8B q/o A and B (4096 x 128), k/v B (1024 x 128)")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 32, 64, 128])
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    projector = SparseProjector(args.widths, args.dim, 0)
    rows = []
    for k, width in enumerate(args.widths):
        order, signs, per_bucket = projector.table(k, device)
        adam = AdamMoments(torch.rand(width, device=device) * 1e-3, torch.rand(width, device=device) * 1e-6, 0.9, 0.999, 1e-8)
        for batch in args.batches:
            g = torch.randn(batch, width, device=device, dtype=torch.bfloat16) * 1e-3
            times = {f"{r}x{b}/{w}": triton.testing.do_bench(partial(adam_sketch, g, order, signs, per_bucket, adam, shape=(r, b, w)))
                     for r, b, w in SHAPES}
            best = min(times, key=times.get)
            rows.append({"width": width, "batch": batch, "ms": times, "best": best,
                         "best_over_first": times[best] / times[next(iter(times))]})
            print(f"width {width:7d} batch {batch:4d}  best {best:10s} {times[best] * 1e3:8.1f} us   "
                  + "  ".join(f"{s} {t * 1e3:.0f}" for s, t in times.items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"card": torch.cuda.get_device_name(), "torch": torch.__version__, "dim": args.dim, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
