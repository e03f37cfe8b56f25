"""Per-example LoRA gradient throughput: a LESS-style loop against rose's batched engine.

Models are built from their architecture config with random weights on the device: throughput does
not depend on the weights' values. Example lengths follow the real pool (a JSON list of
[prompt_tokens, total_tokens], made by `pool_lengths.py`); token ids are random.

    python benchmarks/grad_throughput.py --lengths lengths.json --out docs/benchmarks/grad_throughput.json

Prints a table and writes JSON. Modes, all on the same examples and card:
  less_loop      one example per backward pass, full gradient flattened, Adam direction, dense
                 projection to d dims (the fused Triton kernel; TRAK's fast_jl plays this part in LESS)
  forward        batched forward only, no gradients (a lower bound on any method's time)
  batched_fwd_bwd  batched forward + backward of the summed loss, no per-example gradients, in
                 padded batches cut by `token_batches` (how training batches)
  packed_fwd_bwd   the same in packed rows (`token_packs`, varlen attention): the engine's layout
  engine_<proj>  rose as the gradient stages run it: packed per-example gradients, Adam direction,
                 projection (sparse / dense), or exact cosines with M unprojected targets
                 (exact); on a GPU the decoder's LoRA-free blocks are compiled
                 (`models.compile_lora_free_blocks`) and the sparse mode runs the Adam
                 direction and the sketch as one Triton kernel (engine_sparse_unfused: op by op)
  engine_sparse_eager, packed_fwd_bwd: the same before the blocks are compiled

Before timing, the engine's per-example gradients on the device are checked against the
one-example-at-a-time reference (`grads.reference`) on a few examples.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from rose.config import LoraSettings
from rose.encoding import Encoded, collate, pack, token_batches, token_packs
from rose.grads import engine, reference
from rose.grads.adam import AdamMoments, adam_direction
from rose.grads.losses import response_logprobs, sft_losses
from rose.grads.project import DenseProjector, SparseProjector
from rose.grads.transform import ExactCosines, ProjectedFeatures
from rose.models import add_lora, compile_lora_free_blocks, lora_parameters, set_adapter_dtype

ARCHS = {
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=False),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device) -> float:
    """Measured bf16 matmul rate (8192^3, median of 10 after warm-up): the card's practical peak."""
    if device.type != "cuda":
        return float("nan")
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times) / 1e12


def make_examples(lengths: list[list[int]], n: int, max_len: int, vocab: int, seed: int) -> list[Encoded]:
    rng = random.Random(seed)
    out = []
    for prompt, total in rng.sample(lengths, n):
        total = min(total, max_len)
        prompt = min(prompt, total - 1)
        out.append(Encoded(tuple(rng.randrange(vocab) for _ in range(total)), prompt))
    return out


def build(arch: str, r: int, alpha: float, device: torch.device, dtype: torch.dtype):
    config = LlamaConfig(**ARCHS[arch])
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.requires_grad_(False)
    model = add_lora(model, LoraSettings(r=r, alpha=alpha, dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)
    set_adapter_dtype(model, dtype)
    return model.eval()


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(seconds, peak GB) of fn()."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return time.perf_counter() - start, peak


def run_arch(arch: str, args, lengths, device, dtype, tflops) -> dict:
    model = build(arch, args.rank, args.alpha, device, dtype)
    params = lora_parameters(model)
    names, segments = list(params), [p.numel() for p in params.values()]
    base = model.get_base_model()
    n_params = sum(p.numel() for p in base.parameters()) - base.get_input_embeddings().weight.numel()
    if base.config.tie_word_embeddings:
        n_params += base.get_input_embeddings().weight.numel()  # the tied lm_head still multiplies
    vocab = base.config.vocab_size
    examples = make_examples(lengths, args.examples, args.max_len, vocab, args.seed)
    tokens = sum(len(e) for e in examples)
    d_total = sum(segments)
    gen = torch.Generator(device="cpu").manual_seed(0)
    moments = AdamMoments((torch.randn(d_total, generator=gen) * 1e-4).to(device),
                          (torch.rand(d_total, generator=gen) * 1e-8).to(device), 0.9, 0.999, 1e-8)
    targets = [torch.randn(args.targets, s, generator=gen).to(device) for s in segments]
    pad = 0
    budget = args.batch_tokens
    results: dict = {"arch": arch, "lora_params": d_total, "model_params_no_embedding": n_params,
                     "examples": len(examples), "tokens": tokens, "mean_tokens": tokens / len(examples),
                     "batch_tokens": budget, "projection_dim": args.dim}
    floor_s = 4 * n_params * tokens / (tflops * 1e12) if tflops == tflops else float("nan")
    results["floor_examples_per_s"] = len(examples) / floor_s
    modes = {}

    def record(name: str, seconds: float, peak: float, n: int, n_tokens: int, **extra) -> None:
        modes[name] = {"seconds": seconds, "examples_per_s": n / seconds, "tokens_per_s": n_tokens / seconds,
                       "floor_fraction": (n / seconds) / results["floor_examples_per_s"], "peak_memory_gb": peak, **extra}
        print(f"  {arch:14s} {name:18s} {n / seconds:9.2f} ex/s {n_tokens / seconds:11.0f} tok/s  "
              f"floor {modes[name]['floor_fraction']:6.1%}  peak {peak:6.1f} GB", flush=True)

    # LESS-style loop: one example per backward, flatten, Adam direction, dense projection
    dense = DenseProjector(segments, args.dim, seed=0)
    loop = examples[: args.loop_examples]
    plist = list(params.values())

    def less_loop(project: bool, items=loop) -> None:
        for ex in items:
            batch = {k: v.to(device) for k, v in collate([ex], pad).items()}
            for p in plist:
                p.grad = None
            sft_losses(*response_logprobs(model, batch)).sum().backward()
            flat = torch.cat([p.grad.reshape(-1) for p in plist])
            if project:
                dense(adam_direction(flat[None], moments))

    less_loop(True, loop[:1])  # warm-up: kernels compiled, allocator settled
    seconds, peak = timed(lambda: less_loop(True), device)
    loop_tokens = sum(len(e) for e in loop)
    record("less_loop", seconds, peak, len(loop), loop_tokens)
    seconds, peak = timed(lambda: less_loop(False), device)
    record("less_loop_noproj", seconds, peak, len(loop), loop_tokens)
    for p in plist:
        p.grad = None

    check = examples[:4]
    want = torch.stack(list(reference.sft_grads(model, plist, check, pad))).float()

    def check_engine(label: str) -> None:
        got = torch.zeros_like(want)
        for idx, parts in engine.sft_grads(model, names, check, budget, device):
            got[idx] = torch.cat(list(parts), dim=1).float()
        errs = ((got - want).norm(dim=1) / want.norm(dim=1)).tolist()
        cosines = torch.nn.functional.cosine_similarity(got, want, dim=1).tolist()
        results[f"engine{label}_vs_reference_max_rel_err"] = max(errs)
        results[f"engine{label}_vs_reference_min_cosine"] = min(cosines)
        print(f"  {arch:14s} packed engine{label} vs one-at-a-time reference ({dtype}), per example (one pack): relative error "
              f"{' '.join(f'{e:.1e}' for e in errs)}, cosine {' '.join(f'{c:.4f}' for c in cosines)}", flush=True)

    check_engine("_eager")
    sparse = SparseProjector(segments, args.dim, 0)
    for _, parts in engine.sft_grads(model, names, check, budget, device):
        parts = [p.clone() for p in parts]
        fused = ProjectedFeatures(sparse, moments)(iter(parts))
        unfused = ProjectedFeatures(sparse, moments, fuse=False)(iter(parts))
    fuse_err = float((fused - unfused).abs().max())
    results["fused_vs_unfused_max_abs_diff"] = fuse_err
    print(f"  {arch:14s} fused vs op-by-op Adam direction + sketch: max abs difference {fuse_err:.1e} (unit vectors)", flush=True)
    del parts
    for p in plist:
        p.grad = None

    batches = token_batches([len(e) for e in examples], budget)
    packs = token_packs([len(e) for e in examples], budget)
    results["batches"], results["packs"] = len(batches), len(packs)
    results["padding_fraction"] = 1 - tokens / sum(len(b) * max(len(examples[i]) for i in b) for b in batches)

    def forward_only() -> None:
        with torch.no_grad():
            for idx in batches:
                response_logprobs(model, {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad).items()})

    def fwd_bwd() -> None:
        for idx in batches:
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad).items()}
            torch.autograd.grad(sft_losses(*response_logprobs(model, batch)).sum(), plist)

    def packed_fwd_bwd() -> None:
        for idx in packs:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in pack([examples[i] for i in idx]).items()}
            torch.autograd.grad(sft_losses(*response_logprobs(model, batch)).sum(), plist)

    def engine_pass(sink) -> None:
        for _, parts in engine.sft_grads(model, names, examples, budget, device):
            sink(parts)

    sinks = {"engine_sparse": ProjectedFeatures(sparse, moments),
             "engine_sparse_unfused": ProjectedFeatures(sparse, moments, fuse=False),
             "engine_dense": ProjectedFeatures(dense, moments),
             "engine_exact": ExactCosines(targets, moments)}
    eager = [("forward", forward_only), ("batched_fwd_bwd", fwd_bwd), ("packed_fwd_bwd", packed_fwd_bwd),
             ("engine_sparse_eager", lambda: engine_pass(sinks["engine_sparse"]))]
    compiled = [("packed_fwd_bwd_compiled", packed_fwd_bwd), *[(k, (lambda s=s: engine_pass(s))) for k, s in sinks.items()]]
    for name, fn in eager + (compiled if device.type == "cuda" else []):
        if name == compiled[0][0]:  # as the gradient stages run on a GPU (gradients.compile_blocks)
            print(f"  {arch:14s} compiled {compile_lora_free_blocks(model)} LoRA-free blocks", flush=True)
            check_engine("")
            fn()  # a second warm-up: dynamic-shape recompiles
        fn()  # warm-up
        seconds, peak = timed(fn, device)
        record(name, seconds, peak, len(examples), tokens)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]) as prof:
            engine_pass(sinks["engine_sparse"])
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25), flush=True)
    results["modes"] = modes
    base_rate = modes["less_loop"]["examples_per_s"]
    if "engine_sparse" not in modes:  # CPU: no compiled blocks
        modes["engine_sparse"] = modes["engine_sparse_eager"]
    best = max((k for k in modes if k.startswith("engine_") and k != "engine_exact"), key=lambda k: modes[k]["examples_per_s"])
    results["baseline_examples_per_s"] = base_rate
    results["baseline_noproj_examples_per_s"] = modes["less_loop_noproj"]["examples_per_s"]
    results["engine_mode"] = "engine_sparse"
    results["engine_examples_per_s"] = modes["engine_sparse"]["examples_per_s"]
    results["speedup"] = results["engine_examples_per_s"] / base_rate
    results["speedup_vs_loop_without_projection"] = results["engine_examples_per_s"] / results["baseline_noproj_examples_per_s"]
    results["floor_fraction"] = modes["engine_sparse"]["floor_fraction"]
    results["peak_memory_gb"] = modes["engine_sparse"]["peak_memory_gb"]
    results["fastest_engine_mode"] = best
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", required=True, help="JSON list of [prompt_tokens, total_tokens] from the real pool.")
    parser.add_argument("--archs", nargs="+", default=["llama-3.1-8b", "smollm2-135m"], choices=list(ARCHS))
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--loop-examples", type=int, default=8, help="Examples timed in the LESS-style loop.")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=512)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--targets", type=int, default=10, help="Validation targets for exact scoring.")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="Print a torch.profiler table of one engine pass.")
    parser.add_argument("--out", default="docs/benchmarks/grad_throughput.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = json.loads(Path(args.lengths).read_text())
    tflops = matmul_tflops(device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {card}, torch {torch.__version__}, measured bf16 matmul {tflops:.0f} TFLOP/s", flush=True)
    if device.type == "cuda":  # the fused dense kernel must reproduce the CPU reference matrix
        x = torch.randn(4, 5000)
        want = DenseProjector([5000], 1024, seed=3)(x)
        got = DenseProjector([5000], 1024, seed=3)(x.to(device)).cpu()
        kernel_err = float((got - want).abs().max() / want.abs().max())
        print(f"dense kernel vs CPU reference: max relative error {kernel_err:.1e}", flush=True)
    else:
        kernel_err = 0.0
    report = {"card": card, "dense_kernel_max_rel_err": kernel_err, "torch": torch.__version__, "matmul_tflops_bf16": tflops,
              "weights": "random (built from the architecture config); speed does not depend on weight values",
              "lengths": "prompt/total token counts of a seeded sample of the real pool (SmolLM2 tokenizer)",
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "lengths")}, "models": {}}
    for arch in args.archs:
        report["models"][arch] = run_arch(arch, args, lengths, device, dtype, tflops)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the model went with run_arch's frame
    head = report["models"][args.archs[0]]
    for key in ("baseline_examples_per_s", "engine_examples_per_s", "speedup", "floor_fraction", "peak_memory_gb"):
        report[key] = head[key]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'model':14s} {'baseline ex/s':>14s} {'engine ex/s':>12s} {'speedup':>8s} {'floor':>7s} {'peak GB':>8s}")
    for arch, r in report["models"].items():
        print(f"{arch:14s} {r['baseline_examples_per_s']:14.2f} {r['engine_examples_per_s']:12.2f} {r['speedup']:8.1f} "
              f"{r['floor_fraction']:7.1%} {r['peak_memory_gb']:8.1f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
