"""Where train-grads spends its GPU time: a torch.profiler trace of the engine's pass, kernels by category.

The pass is the one `grad_throughput.py` times as `engine_sparse`: packed per-example LoRA gradients,
Adam direction and sparse sketch (one fused Triton kernel), with the decoder's LoRA-free blocks
compiled, on a model built from its architecture config with random weights and the real pool's
lengths (`benchmarks/pool_lengths.json`). Two warm-up passes (their wall times are reported: the first
carries compilation and the sketch kernel's autotuning), then one timed and one profiled pass.

    python benchmarks/engine_profile.py --arch llama-3.1-8b --out docs/benchmarks/engine_profile_8b.json

Prints the GPU kernel time by category (matmul, attention, our sketch kernel, compiled element-wise
code, log-softmax, copies and casts, ...) with each one's share and the top kernels by time, next to
the pass's wall time and its FLOP floor (as in `grad_throughput.py`: at the measured bf16 matmul
rate and at the data sheet's peak); writes the same to JSON. GPU idle time is wall time minus the
kernels' total: time the host spends launching, synchronising or in Python between kernels.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch
from grad_throughput import (
    ARCHS,
    build,
    floor_flops,
    floor_fractions,
    floor_params,
    make_examples,
    matmul_tflops,
    response_positions,
    spec_tflops,
    sync,
)
from sketch_shapes import GroupedSparseProjector

from rose.grads import engine
from rose.grads.adam import AdamMoments
from rose.grads.losses import SFTLoss
from rose.grads.project import SparseProjector
from rose.grads.sinks import ProjectedFeatures
from rose.models import compile_lora_free_blocks, compile_rotary_embedding, lora_parameters

#: (category, pattern on the lower-cased kernel name), first match wins
CATEGORIES = [
    ("sketch (rose's Triton kernel)", r"adam_sketch|_project\b|rademacher"),
    ("attention", r"flash|fmha|attention|sdpa|efficient_attention"),  # before matmul: flash kernels are cutlass templates
    ("matmul", r"gemm|cutlass|xmma|nvjet|cublas|matmul|splitk|sm90_|wgmma|aten::(mm|addmm|bmm)$"),
    ("softmax / log-softmax / NLL", r"softmax|nll|cross_entropy|logsumexp"),
    ("compiled (inductor Triton)", r"^triton_|triton_(poi|red|per)"),
    ("copy / cast", r"copy|memcpy|cat_|catarray|convert|to_copy"),
    ("reduction", r"reduce"),
    ("index / gather / scatter", r"index|gather|scatter"),
    ("element-wise", r"elementwise|vectorized|unrolled"),
    ("memset", r"memset|fill"),
]


def category(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


def kernel_times(prof, on_gpu: bool) -> dict[str, float]:
    """{kernel name: microseconds} from a profile: every event with device time of its own (on a
    CPU, every operator's own CPU time instead: the same table, for trying the script out)."""
    times: dict[str, float] = {}
    from torch.autograd import DeviceType

    for event in prof.key_averages():
        if on_gpu and event.device_type != DeviceType.CUDA:
            continue  # an operator's own device time is its kernels' again
        own = event.self_device_time_total if on_gpu else event.self_cpu_time_total
        if own > 0:
            times[event.key] = times.get(event.key, 0.0) + float(own)
    return times


def kernel_summary(kernels: dict[str, float]) -> dict:
    """{"categories": seconds and share of kernel time by category, "kernels": every kernel by time}."""
    busy = sum(kernels.values()) / 1e6
    by_category: dict[str, float] = {}
    for name, us in kernels.items():
        by_category[category(name)] = by_category.get(category(name), 0.0) + us / 1e6
    return {"categories": {k: {"seconds": s, "share_of_kernels": s / busy if busy else 0.0}
                           for k, s in sorted(by_category.items(), key=lambda kv: -kv[1])},
            "kernels": [{"name": n, "seconds": us / 1e6, "category": category(n)}
                        for n, us in sorted(kernels.items(), key=lambda kv: -kv[1])]}


def print_summary(summary: dict, top: int) -> None:
    print(f"{'category':32s} {'seconds':>9s} {'share':>7s}")
    for name, row in summary["categories"].items():
        print(f"{name:32s} {row['seconds']:9.4f} {row['share_of_kernels']:7.1%}")
    print(f"\n{'top kernels':90s} {'seconds':>9s}")
    for row in summary["kernels"][:top]:
        print(f"{row['name'][:90]:90s} {row['seconds']:9.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="llama-3.1-8b", choices=list(ARCHS))
    parser.add_argument("--lengths", default="benchmarks/pool_lengths.json")
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=512)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--batch-tokens", type=int, default=6144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=15, help="Kernels printed by time (the JSON keeps them all).")
    parser.add_argument("--eager-rope", action="store_true",
                        help="Leave the rotary embedding eager (as before it was compiled with the blocks), to compare.")
    parser.add_argument("--table", default="permuted", choices=["permuted", "grouped"],
                        help="The sparse sketch's table: the projector's, or sketch_shapes.py's candidate with 16-coordinate groups.")
    parser.add_argument("--trace", help="Also write the Chrome trace here (large).")
    parser.add_argument("--out", default="docs/benchmarks/engine_profile.json")
    args = parser.parse_args()

    from torch.profiler import ProfilerActivity, profile

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tflops, card = matmul_tflops(device), torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    spec = spec_tflops(card)
    model = build(args.arch, args.rank, args.alpha, device, dtype)
    params = lora_parameters(model)
    names, segments = list(params), [p.numel() for p in params.values()]
    examples = make_examples(json.loads(Path(args.lengths).read_text()), args.examples, args.max_len,
                             model.get_base_model().config.vocab_size, args.seed)
    gen = torch.Generator(device="cpu").manual_seed(0)
    moments = AdamMoments((torch.randn(sum(segments), generator=gen) * 1e-4).to(device),
                          (torch.rand(sum(segments), generator=gen) * 1e-8).to(device), 0.9, 0.999, 1e-8)
    table = GroupedSparseProjector if args.table == "grouped" else SparseProjector
    sink = ProjectedFeatures(table(segments, args.dim, 0), moments)
    compiled = compile_lora_free_blocks(model) if device.type == "cuda" else 0
    rope = compile_rotary_embedding(model) if device.type == "cuda" and not args.eager_rope else 0

    def engine_pass() -> None:
        for _, parts in engine.per_example_grads(model, names, examples, SFTLoss(), args.batch_tokens, device):
            sink(parts)

    warmup_seconds = []  # the first carries compilation and the sketch kernel's autotuning, once per process
    for _ in range(2):  # compile, then the dynamic-shape recompiles
        start = time.perf_counter()
        engine_pass()
        sync(device)
        warmup_seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    engine_pass()
    sync(device)
    unprofiled = time.perf_counter() - start
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        engine_pass()
        sync(device)
    if args.trace:
        prof.export_chrome_trace(args.trace)

    kernels = kernel_times(prof, device.type == "cuda")
    busy = sum(kernels.values()) / 1e6
    body, head = floor_params(model)
    tokens = sum(len(e) for e in examples)
    flops = floor_flops(4, body, head, tokens, sum(response_positions(e) for e in examples))
    report = {
        "card": card, "torch": torch.__version__, "arch": args.arch, "dtype": str(dtype), "compiled_blocks": compiled, "compiled_rope": bool(rope),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "trace")},
        "examples": len(examples), "tokens": tokens, "warmup_pass_seconds": warmup_seconds, "pass_seconds": unprofiled,
        "examples_per_s": len(examples) / unprofiled,
        **floor_fractions(flops, unprofiled, tflops, spec),
        "matmul_tflops_bf16": tflops, "spec_tflops_bf16": spec,
        "kernel_seconds": busy, "gpu_idle_share_of_wall": max(0.0, 1 - busy / unprofiled),
        **kernel_summary(kernels),
        "notes": "kernel time from one profiled pass; pass_seconds from the unprofiled pass before it",
    }
    print(f"{card}, {args.arch}, {len(examples)} examples ({tokens} tokens), {compiled} compiled blocks, RoPE {'compiled' if rope else 'eager'}: "
          f"{unprofiled:.3f} s a pass, {len(examples) / unprofiled:.1f} ex/s, floor {report['floor_fraction']:.1%} "
          f"(measured {tflops:.0f} TFLOP/s) / {report['floor_fraction_spec']:.1%} (spec {spec:.0f})")
    print(f"warm-up passes {', '.join(f'{t:.2f}' for t in warmup_seconds)} s; kernels {busy:.3f} s; "
          f"GPU idle {report['gpu_idle_share_of_wall']:.1%} of wall\n")
    print_summary(report, args.top)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
