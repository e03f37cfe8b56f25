"""Per-example LoRA gradient throughput: LESS's loop, step for step, against rose's batched engine.

Models are built from their architecture config with random weights on the device: throughput does
not depend on the weights' values. Example lengths follow the real pool (a JSON list of
[prompt_tokens, total_tokens]: `benchmarks/pool_lengths.json`, made by
`python benchmarks/pool_lengths.py configs/shp.yaml --n 6000 --out benchmarks/pool_lengths.json`);
token ids are random.

    python benchmarks/grad_throughput.py --out docs/benchmarks/grad_throughput.json

Prints a table and writes JSON. Modes, all on the same card:
  less_loop      LESS's gradient collection (`less_baseline.py`): one example per forward/backward
                 through the model's own loss (logits at every position), the flattened gradient
                 turned into Adam's direction, buffered, and projected 16 at a time ([16, D] blocks,
                 float16) by the dense Rademacher kernel; the headline baseline
  less_loop_noproj  the same loop with the projection left out (as if it were free)
  less_loop_trak the same loop with TRAK's own CudaProjector (its `fast_jl` kernel) as LESS runs
                 it, where `traker` and `fast_jl` import (`benchmarks/build_fast_jl.sh` builds
                 them): the fair LESS baseline
  forward        batched forward only, no gradients (a lower bound on any method's time)
  batched_fwd_bwd  batched forward + backward of the summed loss, no per-example gradients, in
                 padded batches cut by `token_batches` (how training batches)
  packed_fwd_bwd   the same in packed rows (`token_packs`, varlen attention): the engine's layout
  engine_<proj>  rose as the gradient stages run it: packed per-example gradients, Adam direction,
                 projection (sparse / dense), or exact cosines with M unprojected targets
                 (exact); the sparse mode runs the Adam direction and the sketch as one Triton
                 kernel on a GPU (engine_sparse_unfused: op by op)
  engine_sparse_eager, packed_fwd_bwd: before the blocks are compiled
  engine_sparse_matched  the sparse sketch at --matched-dim (32768), whose top-5% agreement with
                 exact scores matches the dense projection's at --dim: the fidelity-matched pair
                 against less_loop_trak
On a GPU the decoder's LoRA-free blocks and its rotary embedding are compiled
(`models.compile_lora_free_blocks`, `compile_rotary_embedding`, as the gradient stages run) for
the engine modes, packed_fwd_bwd_compiled and both LESS loops, which run the same decoder layers.

Every mode runs once to warm up and is then timed `--repeats` times (default 3); the JSON keeps
each repeat's seconds and the tables use the median. Default counts, chosen to keep the default
run (8B, then SmolLM2) within about 6 minutes on one H200 (`wall_seconds` in the JSON says what
it took): 96 examples for the batched modes (3 packs of 6,144 tokens), 48 for the two loops (3
projection calls of 16). The loops time half of the same 96 examples, chosen to hold half of
their tokens (`balanced_subset`), so the mean lengths match and examples/s compare directly.

FLOP floor of a mode: 4 x B x tokens + 4 x H x logit positions, at the card's measured bf16
matmul rate (`floor_fraction`) and at its data-sheet dense bf16 peak (`floor_fraction_spec`, 989
TFLOP/s on an H100 SXM or H200). B: every parameter a token passes through in the decoder (LoRA adapters included),
without the input embedding and the LM head; H: the LM head's vocab x hidden matrix (tied to the
embedding or not, counted once). 4 = forward (2) + the backward to the inputs (2): the frozen
weights need no weight gradient. Logit positions are those where a mode forms logits: rose's
modes only at response positions (`response_logprobs`), the LESS loops at every position of the
sequence (the model's own loss). Attention's T^2 terms and the small LoRA weight gradients are
left out, so the floor is a lower bound on time.

Before timing, the engine's per-example gradients and the LESS loop's projected features on the
device are checked against the one-example-at-a-time reference (`grads.oracle`).
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
import transformers
from less_baseline import PROJECT_INTERVAL, less_features, trak_projector
from transformers import AutoModelForCausalLM

from rose.config import LoraConfig
from rose.encoding import Encoded, collate, pack, token_batches, token_packs
from rose.grads import engine, oracle
from rose.grads.adam import AdamMoments, adam_direction
from rose.grads.losses import SFTLoss, response_logprobs, sft_losses
from rose.grads.project import DenseProjector, SparseProjector
from rose.grads.sinks import ExactCosines, ProjectedFeatures
from rose.models import (
    add_lora,
    compile_lora_free_blocks,
    compile_rotary_embedding,
    eager_rotary_embedding,
    lora_parameters,
    set_adapter_dtype,
)

ARCHS = {
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=500000.0,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "gemma-3-270m": dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                         layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=False),
}
CONFIG_CLASS = {"gemma-3-270m": "Gemma3TextConfig"}  # the rest are Llama-shaped
FLOOR = ("4 x body_params x tokens + 4 x lm_head_params x logit_positions FLOPs at the measured bf16 matmul rate; "
         "body_params: decoder parameters incl. LoRA adapters, without input embedding and LM head; lm_head_params: "
         "vocab x hidden, once even when tied; logit_positions: response positions for rose's modes, every position "
         "for the LESS loops")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Dense bf16 tensor-core peak from each card's data sheet (no sparsity), TFLOP/s: the second floor
SPEC_BF16_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "A100": 312.0}


def spec_tflops(card: str) -> float:
    """The card's data-sheet dense bf16 peak (NaN for a card not listed, the CPU among them)."""
    return next((rate for name, rate in SPEC_BF16_TFLOPS.items() if name in card), float("nan"))


def floor_fractions(flops: float, seconds: float, tflops: float, spec: float) -> dict[str, float]:
    """The share of the FLOP floor a pass of `seconds` reaches: at the measured matmul rate and at the data-sheet peak."""
    return {"floor_fraction": flops / (tflops * 1e12) / seconds, "floor_fraction_spec": flops / (spec * 1e12) / seconds}


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


def balanced_subset(examples: list[Encoded], n: int) -> list[Encoded]:
    """n of the examples holding n/len(examples) of their tokens, in their original order.

    The examples, longest first, are dealt to len(examples)/n groups of n, each to the group with
    the fewest tokens that has room; the first group is returned. Its mean length matches the
    whole set's, so a loop timed on it compares with the batched modes example for example.
    """
    groups: list[list[int]] = [[] for _ in range(len(examples) // n)]
    totals = [0] * len(groups)
    for i in sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i)):
        g = min((g for g in range(len(groups)) if len(groups[g]) < n), key=lambda g: totals[g])
        groups[g].append(i)
        totals[g] += len(examples[i])
    return [examples[i] for i in sorted(groups[0])]


def response_positions(ex: Encoded) -> int:
    """Positions whose logits rose forms: those predicting a response token (a sequence's first
    token is never predicted)."""
    return len(ex) - max(ex.n_prompt, 1)


def floor_params(model: torch.nn.Module) -> tuple[int, int]:
    """(body, LM head) parameter counts of the FLOP floor; a tied head is the embedding matrix,
    counted once, and the embedding lookup itself costs no FLOPs."""
    base = model.get_base_model()
    embedding, head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    body = sum(p.numel() for p in base.parameters() if p is not embedding and p is not head)
    return body, head.numel()


def floor_flops(passes: int, body: int, head: int, tokens: int, logit_positions: int) -> float:
    """The matmul FLOPs no implementation avoids: `passes` x 2 per parameter and token through the
    body, and through the LM head at the positions where logits are formed (4 passes for a forward
    and a backward to the activations, 2 for a forward)."""
    return passes * (body * tokens + head * logit_positions)


def build(arch: str, r: int, alpha: float, device: torch.device, dtype: torch.dtype):
    config = getattr(transformers, CONFIG_CLASS.get(arch, "LlamaConfig"))(**ARCHS[arch])
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.requires_grad_(False)
    model = add_lora(model, LoraConfig(r=r, alpha=alpha, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
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


def compare_rows(got: torch.Tensor, want: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per row of [N, D]: relative error of got against want, and their cosine."""
    got, want = got.float(), want.float()
    errs = ((got - want).norm(dim=1) / want.norm(dim=1)).tolist()
    return errs, torch.nn.functional.cosine_similarity(got, want, dim=1).tolist()


def run_arch(arch: str, args, lengths, device, dtype, tflops, spec) -> dict:
    model = build(arch, args.rank, args.alpha, device, dtype)
    params = lora_parameters(model)
    names, plist, segments = list(params), list(params.values()), [p.numel() for p in params.values()]
    body, head = floor_params(model)
    vocab = model.get_base_model().config.vocab_size
    examples = make_examples(lengths, args.examples, args.max_len, vocab, args.seed)
    loop = balanced_subset(examples, args.loop_examples)
    tokens = sum(len(e) for e in examples)
    d_total = sum(segments)
    gen = torch.Generator(device="cpu").manual_seed(0)
    moments = AdamMoments((torch.randn(d_total, generator=gen) * 1e-4).to(device),
                          (torch.rand(d_total, generator=gen) * 1e-8).to(device), 0.9, 0.999, 1e-8)
    targets = [torch.randn(args.targets, s, generator=gen).to(device) for s in segments]
    pad = 0
    budget = args.batch_tokens
    results: dict = {"arch": arch, "lora_params": d_total, "examples": len(examples), "tokens": tokens,
                     "mean_tokens": tokens / len(examples), "loop_examples": len(loop),
                     "loop_tokens": sum(len(e) for e in loop), "loop_mean_tokens": sum(len(e) for e in loop) / len(loop),
                     "batch_tokens": budget, "projection_dim": args.dim,
                     "flop_floor": {"formula": FLOOR, "body_params": body, "lm_head_params": head,
                                    "tied_embeddings": bool(model.get_base_model().config.tie_word_embeddings),
                                    "matmul_tflops_bf16": tflops}}
    modes = {}

    def measure(name: str, fn, items: list[Encoded], logit_positions: int) -> None:
        """Time fn() `args.repeats` times (after the caller's warm-up) and record the median."""
        runs = [timed(fn, device) for _ in range(args.repeats)]
        seconds, peak = statistics.median(s for s, _ in runs), max(p for _, p in runs)
        n, n_tokens = len(items), sum(len(e) for e in items)
        flops = floor_flops(4, body, head, n_tokens, logit_positions)
        fractions = floor_fractions(flops, seconds, tflops, spec)
        modes[name] = {"seconds": seconds, "seconds_per_repeat": [s for s, _ in runs], "examples": n,
                       "tokens": n_tokens, "logit_positions": logit_positions, "examples_per_s": n / seconds,
                       "tokens_per_s": n_tokens / seconds, "floor_seconds": flops / (tflops * 1e12),
                       **fractions, "peak_memory_gb": peak}
        spread = f"{min(s for s, _ in runs):.3f}-{max(s for s, _ in runs):.3f} s"
        print(f"  {arch:14s} {name:24s} {n / seconds:9.2f} ex/s {n_tokens / seconds:11.0f} tok/s  floor {fractions['floor_fraction']:6.1%} "
              f"({fractions['floor_fraction_spec']:6.1%} of spec)  peak {peak:6.1f} GB  ({args.repeats} repeats: {spread})", flush=True)

    check = examples[:4]
    want = torch.stack(list(oracle.sft_grads(model, plist, check, pad))).float()
    model.zero_grad()

    def check_engine(label: str) -> None:
        got = torch.zeros_like(want)
        for idx, parts in engine.per_example_grads(model, names, check, SFTLoss(), budget, device):
            got[idx] = torch.cat(list(parts), dim=1).float()
        errs, cosines = compare_rows(got, want)
        results[f"engine{label}_vs_reference_max_rel_err"] = max(errs)
        results[f"engine{label}_vs_reference_min_cosine"] = min(cosines)
        print(f"  {arch:14s} packed engine{label} vs one-at-a-time reference ({dtype}), per example (one pack): relative error "
              f"{' '.join(f'{e:.1e}' for e in errs)}, cosine {' '.join(f'{c:.4f}' for c in cosines)}", flush=True)

    check_engine("_eager")
    sparse = SparseProjector(segments, args.dim, 0)
    for _, parts in engine.per_example_grads(model, names, check, SFTLoss(), budget, device):
        parts = [p.clone() for p in parts]
        fused = ProjectedFeatures(sparse, moments)(iter(parts))
        unfused = ProjectedFeatures(sparse, moments, fuse=False)(iter(parts))
    fuse_err = float((fused - unfused).abs().max())
    results["fused_vs_unfused_max_abs_diff"] = fuse_err
    print(f"  {arch:14s} fused vs op-by-op Adam direction + sketch: max abs difference {fuse_err:.1e} (unit vectors)", flush=True)
    del parts

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
        for _, parts in engine.per_example_grads(model, names, examples, SFTLoss(), budget, device):
            sink(parts)

    dense = DenseProjector(segments, args.dim, seed=0)
    sinks = {"engine_sparse": ProjectedFeatures(sparse, moments),
             "engine_sparse_unfused": ProjectedFeatures(sparse, moments, fuse=False),
             "engine_dense": ProjectedFeatures(dense, moments),
             "engine_sparse_matched": ProjectedFeatures(SparseProjector(segments, args.matched_dim, 0), moments),
             "engine_exact": ExactCosines(targets, moments)}
    eager = [("forward", forward_only), ("batched_fwd_bwd", fwd_bwd), ("packed_fwd_bwd", packed_fwd_bwd),
             ("engine_sparse_eager", lambda: engine_pass(sinks["engine_sparse"]))]
    compiled = [("packed_fwd_bwd_compiled", packed_fwd_bwd), *[(k, (lambda s=s: engine_pass(s))) for k, s in sinks.items()]]
    rose_logits = sum(response_positions(e) for e in examples)
    for name, fn in eager + (compiled if device.type == "cuda" else []):
        if name == compiled[0][0]:  # as every pass runs on a GPU (model.compile_blocks)
            print(f"  {arch:14s} compiled {compile_lora_free_blocks(model)} LoRA-free blocks"
                  f"{' and the rotary embedding' if compile_rotary_embedding(model) else ''}", flush=True)
            check_engine("")
            fn()  # a second warm-up: dynamic-shape recompiles
        fn()  # warm-up
        measure(name, fn, examples, rose_logits)

    # LESS's loop, with the compiled blocks on a GPU; its first projection block is the warm-up and
    # is checked against the reference: the same gradients, Adam direction and projection
    first = loop[:PROJECT_INTERVAL]
    got = less_features(model, plist, first, pad, moments, dense)
    grads = torch.stack(list(oracle.sft_grads(model, plist, first, pad)))
    errs, cosines = compare_rows(got, dense(adam_direction(grads, moments)).cpu())
    results["less_loop_vs_reference_max_rel_err"], results["less_loop_vs_reference_min_cosine"] = max(errs), min(cosines)
    print(f"  {arch:14s} LESS loop vs reference, projected Adam directions of {len(first)} examples: relative error "
          f"max {max(errs):.1e}, cosine min {min(cosines):.4f}", flush=True)
    del grads
    model.zero_grad()
    measure("less_loop", lambda: less_features(model, plist, loop, pad, moments, dense), loop, sum(len(e) for e in loop))
    measure("less_loop_noproj", lambda: less_features(model, plist, loop, pad, moments, None), loop, sum(len(e) for e in loop))
    trak = trak_projector(sum(segments), args.dim, device)
    if trak is not None:  # LESS as it runs: TRAK's fast_jl kernel; its matrix is its own, so only its rows' shape and norms are checked
        try:
            rows = less_features(model, plist, first, pad, moments, trak)
            results["less_loop_trak_rows"] = list(rows.shape)
            print(f"  {arch:14s} LESS loop with TRAK's fast_jl: {tuple(rows.shape)} rows, norms "
                  f"{rows.norm(dim=1).min():.3g}-{rows.norm(dim=1).max():.3g}", flush=True)
            model.zero_grad()
            measure("less_loop_trak", lambda: less_features(model, plist, loop, pad, moments, trak), loop, sum(len(e) for e in loop))
        except RuntimeError as err:  # an external extension: its failure is reported, the other modes' results kept
            results["less_loop_trak_error"] = str(err)[:500]
            print(f"  {arch:14s} LESS loop with TRAK's fast_jl failed: {err}", flush=True)
            model.zero_grad()

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]) as prof:
            engine_pass(sinks["engine_sparse"])
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25), flush=True)
    results["modes"] = modes
    if "engine_sparse" not in modes:  # CPU: no compiled blocks
        modes["engine_sparse"] = modes["engine_sparse_eager"]
    best = max((k for k in modes if k.startswith("engine_") and k != "engine_exact"), key=lambda k: modes[k]["examples_per_s"])
    engine_rate = modes["engine_sparse"]["examples_per_s"]
    results.update({
        "baseline_mode": "less_loop",
        "baseline_examples_per_s": modes["less_loop"]["examples_per_s"],
        "baseline_noproj_examples_per_s": modes["less_loop_noproj"]["examples_per_s"],
        "engine_mode": "engine_sparse",
        "engine_examples_per_s": engine_rate,
        "speedup": engine_rate / modes["less_loop"]["examples_per_s"],
        "speedup_vs_loop_without_projection": engine_rate / modes["less_loop_noproj"]["examples_per_s"],
        "floor_fraction": modes["engine_sparse"]["floor_fraction"],
        "floor_fraction_spec": modes["engine_sparse"]["floor_fraction_spec"],
        "baseline_floor_fraction": modes["less_loop"]["floor_fraction"],
        "peak_memory_gb": modes["engine_sparse"]["peak_memory_gb"],
        "fastest_engine_mode": best,
    })
    if "less_loop_trak" in modes:  # the fair pairs: dense against dense, and the same top-5% fidelity (projection_fidelity.json)
        trak_rate = modes["less_loop_trak"]["examples_per_s"]
        results.update({"trak_examples_per_s": trak_rate,
                        "speedup_dense_vs_trak": modes["engine_dense"]["examples_per_s"] / trak_rate,
                        "speedup_sparse_vs_trak": engine_rate / trak_rate,
                        "speedup_fidelity_matched_vs_trak": modes["engine_sparse_matched"]["examples_per_s"] / trak_rate})
    eager_rotary_embedding(model)  # the next architecture's eager modes run eager (the compiled function is a family-wide global)
    return results


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="benchmarks/pool_lengths.json",
                        help="JSON list of [prompt_tokens, total_tokens] from the real pool (pool_lengths.py).")
    parser.add_argument("--archs", nargs="+", default=["llama-3.1-8b", "smollm2-135m"], choices=list(ARCHS))
    parser.add_argument("--examples", type=int, default=96, help="Examples timed in the batched modes.")
    parser.add_argument("--loop-examples", type=int, default=48,
                        help=f"Examples timed in the LESS loops: a multiple of {PROJECT_INTERVAL} that divides --examples.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each mode after its warm-up (at least 3).")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=512)
    parser.add_argument("--matched-dim", type=int, default=32768,
                        help="Sketch width of engine_sparse_matched: the sparse sketch whose top-5%% overlap with exact scores "
                             "matches or beats the dense projection at --dim (docs/benchmarks/projection_fidelity.json).")
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--targets", type=int, default=10, help="Validation targets for exact scoring.")
    parser.add_argument("--batch-tokens", type=int, default=6144)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="Print a torch.profiler table of one engine pass.")
    parser.add_argument("--out", default="docs/benchmarks/grad_throughput.json")
    args = parser.parse_args()
    if args.loop_examples <= 0 or args.loop_examples % PROJECT_INTERVAL or args.examples % args.loop_examples:
        parser.error(f"--loop-examples must be a positive multiple of {PROJECT_INTERVAL} (LESS projects "
                     f"{PROJECT_INTERVAL} at a time) that divides --examples ({args.examples})")
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (each mode reports the median)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = json.loads(Path(args.lengths).read_text())
    tflops = matmul_tflops(device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    spec = spec_tflops(card)
    print(f"device: {card}, torch {torch.__version__}, measured bf16 matmul {tflops:.0f} TFLOP/s (data sheet {spec:.0f})", flush=True)
    if device.type == "cuda":  # the fused dense kernel must reproduce the CPU reference matrix
        x = torch.randn(4, 5000)
        want = DenseProjector([5000], 1024, seed=3)(x)
        got = DenseProjector([5000], 1024, seed=3)(x.to(device)).cpu()
        kernel_err = float((got - want).abs().max() / want.abs().max())
        print(f"dense kernel vs CPU reference: max relative error {kernel_err:.1e}", flush=True)
    else:
        kernel_err = 0.0
    report = {"card": card, "dense_kernel_max_rel_err": kernel_err, "torch": torch.__version__, "matmul_tflops_bf16": tflops,
              "spec_tflops_bf16": spec, "weights": "random (built from the architecture config); speed does not depend on weight values",
              "lengths": "prompt/total token counts of a seeded sample of the real pool (SmolLM2 tokenizer)",
              "timing": f"each mode warmed up once, then timed {args.repeats} times; seconds is the median",
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "models": {}}
    for arch in args.archs:
        report["models"][arch] = run_arch(arch, args, lengths, device, dtype, tflops, spec)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the model went with run_arch's frame
    head = report["models"][args.archs[0]]
    for key in ("baseline_examples_per_s", "baseline_noproj_examples_per_s", "engine_examples_per_s", "speedup",
                "speedup_vs_loop_without_projection", "floor_fraction", "floor_fraction_spec", "peak_memory_gb"):
        report[key] = head[key]
    report["wall_seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'model':14s} {'LESS ex/s':>10s} {'no-proj ex/s':>13s} {'engine ex/s':>12s} {'speedup':>8s} "
          f"{'vs no-proj':>10s} {'floor':>7s} {'spec':>7s} {'peak GB':>8s}")
    for arch, r in report["models"].items():
        print(f"{arch:14s} {r['baseline_examples_per_s']:10.2f} {r['baseline_noproj_examples_per_s']:13.2f} "
              f"{r['engine_examples_per_s']:12.2f} {r['speedup']:8.1f} {r['speedup_vs_loop_without_projection']:10.1f} "
              f"{r['floor_fraction']:7.1%} {r['floor_fraction_spec']:7.1%} {r['peak_memory_gb']:8.1f}")
    print(f"wrote {out} ({report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
