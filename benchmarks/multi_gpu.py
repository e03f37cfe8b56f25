"""Scaling of the train-gradient computation over the GPUs of one host, under torchrun.

    torchrun --standalone --nproc-per-node N benchmarks/multi_gpu.py --lengths lengths.json \
        --arch llama-3.1-8b --out runs/multi_gpu/llama-N.json

Every rank builds the same random-weight model (seeded; throughput does not depend on the weights'
values), takes every world-th shard of the examples exactly as the `train-grads` stage does, and
computes sparse-projected Adam-direction gradients with rose's engine. Rank 0 gathers the features
in example order and saves them beside the JSON, so runs on 1, 2 and 4 GPUs can be compared:

    python benchmarks/multi_gpu.py --combine runs/multi_gpu/llama-*.json --out docs/benchmarks/multi_gpu.json

reports examples/s per GPU, scaling efficiency (throughput on n GPUs / (n x one GPU)) and the
largest difference between the features of each run and the one-GPU run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from grad_throughput import build, make_examples  # same models and example lengths as the throughput benchmark

from rose.distributed import Dist
from rose.grads import engine
from rose.grads.adam import AdamMoments
from rose.grads.losses import SFTLoss
from rose.grads.project import SparseProjector
from rose.grads.sinks import ProjectedFeatures
from rose.models import lora_parameters
from rose.store import shard_ranges


def measure(args) -> None:
    ctx = Dist.from_env()
    device = ctx.device("auto")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build(args.arch, args.rank, args.alpha, device, dtype)
    params = lora_parameters(model)
    names, segments = list(params), [p.numel() for p in params.values()]
    gen = torch.Generator().manual_seed(0)
    total = sum(segments)
    moments = AdamMoments((torch.randn(total, generator=gen) * 1e-4).to(device), (torch.rand(total, generator=gen) * 1e-8).to(device),
                          0.9, 0.999, 1e-8)
    sink = ProjectedFeatures(SparseProjector(segments, args.dim, 0), moments)
    examples = make_examples(json.loads(Path(args.lengths).read_text()), args.examples, args.max_len,
                             model.get_base_model().config.vocab_size, 0)
    shards = shard_ranges(len(examples), args.shard_size)
    mine = [s for i, s in enumerate(shards) if i % ctx.world == ctx.rank]

    def work() -> dict[int, np.ndarray]:
        out = {}
        for start, stop in mine:
            feats = np.zeros((stop - start, args.dim), dtype=np.float32)
            for idx, parts in engine.per_example_grads(model, names, examples[start:stop], SFTLoss(), args.batch_tokens, device):
                feats[idx] = sink(parts).float().cpu().numpy()
            out[start] = feats
        return out

    work() if args.warmup else None
    ctx.barrier()
    started = time.perf_counter()
    local = work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ctx.barrier()
    seconds = time.perf_counter() - started
    gathered = [None] * ctx.world
    if ctx.world > 1:
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    if ctx.is_main:
        parts = {k: v for part in gathered for k, v in part.items()}
        features = np.concatenate([parts[start] for start, _ in shards])
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out.with_suffix(".npy"), features)
        tokens = sum(len(e) for e in examples)
        report = {"arch": args.arch, "gpus": ctx.world, "card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "examples": len(examples), "tokens": tokens, "seconds": seconds,
                  "examples_per_s": len(examples) / seconds, "examples_per_s_per_gpu": len(examples) / seconds / ctx.world,
                  "features": out.with_suffix(".npy").name, "settings": {k: v for k, v in vars(args).items() if k != "out"}}
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{args.arch} on {ctx.world} x {report['card']}: {report['examples_per_s']:.1f} examples/s "
              f"({report['examples_per_s_per_gpu']:.1f} per GPU)")


def combine(files: list[str], out: str) -> None:
    runs = sorted((json.loads(Path(f).read_text()) | {"path": f} for f in files), key=lambda r: (r["arch"], r["gpus"]))
    table = {}
    for r in runs:
        one = next((b for b in runs if b["arch"] == r["arch"] and b["gpus"] == 1), None)
        if one is None:
            raise SystemExit(f"no one-GPU run of {r['arch']} to compare with")
        diff = np.abs(np.load(Path(r["path"]).with_suffix(".npy")) - np.load(Path(one["path"]).with_suffix(".npy"))).max()
        r.update(scaling_efficiency=r["examples_per_s"] / (r["gpus"] * one["examples_per_s"]), max_feature_diff_vs_1gpu=float(diff))
        table.setdefault(r["arch"], {})[r["gpus"]] = {k: r[k] for k in ("card", "examples_per_s", "examples_per_s_per_gpu",
                                                                         "scaling_efficiency", "max_feature_diff_vs_1gpu")}
        print(f"{r['arch']:14s} {r['gpus']} GPU  {r['examples_per_s']:8.1f} ex/s  {r['examples_per_s_per_gpu']:8.1f} per GPU  "
              f"efficiency {r['scaling_efficiency']:6.1%}  max |diff| {diff:.1e}")
    Path(out).write_text(json.dumps(table, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--combine", nargs="+", help="Combine per-run JSONs into one table.")
    parser.add_argument("--lengths")
    parser.add_argument("--arch", default="llama-3.1-8b")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=512)
    parser.add_argument("--dim", type=int, default=32768)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--warmup", action="store_true", help="Run the work once untimed first (kernels, allocator).")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    combine(args.combine, args.out) if args.combine else measure(args)


if __name__ == "__main__":
    main()
