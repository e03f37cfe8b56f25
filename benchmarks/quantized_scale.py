"""4-bit base weights (bitsandbytes NF4, QLoRA-style): memory and gradient throughput at 8B and 70B.

A model with random weights is built from its architecture config, saved as a bf16 model folder,
and loaded through rose's own loader with `model.kwargs.quantization_config` (NF4, bf16 compute),
as a user's config would; LoRA (r=128, alpha=512, q/k/v/o) goes on top in bf16. For each model it
measures the weights' GPU memory after loading, then the per-example gradient engine (sparse
projection, as train-grads runs it) on pool-length examples: examples/s and peak memory; and one
LoRA training micro-batch's peak memory. A 70B model is built depth-reduced (`--layers70`) and
extrapolated to its 80 layers: memory = the non-layer part + 80 x the measured per-layer part,
time = 80 / layers x the measured time (the embedding and LM head are measured, not extrapolated).

    python benchmarks/quantized_scale.py --out docs/benchmarks/quantized_scale.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rose.config import LoraConfig, ModelConfig
from rose.encoding import Encoded, collate, pack, token_packs
from rose.grads import engine
from rose.grads.adam import AdamMoments
from rose.grads.losses import SFTLoss, response_logprobs, sft_losses
from rose.grads.project import SparseProjector
from rose.grads.sinks import ProjectedFeatures
from rose.models import add_lora, load_model, lora_parameters, set_adapter_dtype

ARCHS = {
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, rope_theta=500000.0, tie_word_embeddings=False),
    "llama-3.1-70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, head_dim=128, rope_theta=500000.0, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
}
NF4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}


def gb(n: int) -> float:
    return n / 2**30


def examples_from(lengths: list, n: int, vocab: int, seed: int = 0) -> list[Encoded]:
    rng = random.Random(seed)
    return [Encoded(tuple(rng.randrange(vocab) for _ in range(min(total, 2048))), min(prompt, min(total, 2048) - 1))
            for prompt, total in rng.sample(lengths, n)]


def measure(arch: str, layers: int, folder: Path, lengths: list, args, device: torch.device, batch_tokens: int) -> dict:
    settings = {**ARCHS[arch], "num_hidden_layers": layers}
    torch.manual_seed(0)
    with torch.device(device):
        built = LlamaForCausalLM(LlamaConfig(**settings)).to(torch.bfloat16)
    built.save_pretrained(folder, max_shard_size="5GB")
    del built
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    quantized = load_model(ModelConfig(name=str(folder), device=str(device), kwargs={"quantization_config": NF4}), device)
    load_seconds = time.perf_counter() - started
    # what the weights themselves hold (packed 4-bit storage, bf16 embeddings, norms), not what the allocator keeps
    weights = sum(t.numel() * t.element_size() for t in [*quantized.parameters(), *quantized.buffers()])
    model = add_lora(quantized, LoraConfig(r=args.rank, alpha=4 * args.rank, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    set_adapter_dtype(model, torch.bfloat16)
    params = lora_parameters(model)
    names, segments = list(params), [p.numel() for p in params.values()]
    examples = examples_from(lengths, args.examples, settings["vocab_size"])
    tokens = sum(len(e) for e in examples)
    moments = AdamMoments(torch.zeros(sum(segments), device=device), torch.full((sum(segments),), 1e-8, device=device), 0.9, 0.999, 1e-8)
    sink = ProjectedFeatures(SparseProjector(segments, args.dim, 0), moments)

    def engine_pass(net) -> None:
        for _, parts in engine.per_example_grads(net, names, examples, SFTLoss(), batch_tokens, device):
            sink(parts)

    engine_pass(model)  # warm-up
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        engine_pass(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    engine_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    # one training micro-batch (forward + backward to the float32 adapters, as train_lora runs it)
    set_adapter_dtype(model, torch.float32)
    model.train()
    chunk = [examples[i] for i in token_packs([len(e) for e in examples], batch_tokens)[0]]
    batch = pack(chunk) if device.type == "cuda" else collate(chunk, 0)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = sft_losses(*response_logprobs(model, batch)).sum()
    loss.backward()
    train_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    seconds = statistics.median(times)
    result = {"arch": arch, "layers": layers, "load_seconds": load_seconds, "weights_gb": gb(weights),
              "batch_tokens": batch_tokens, "examples": len(examples), "tokens": tokens, "engine_seconds": seconds, "engine_seconds_per_repeat": times,
              "engine_examples_per_s": len(examples) / seconds, "engine_tokens_per_s": tokens / seconds,
              "engine_peak_gb": gb(engine_peak), "train_micro_batch_tokens": sum(len(e) for e in chunk), "train_peak_gb": gb(train_peak)}
    del model, quantized
    shutil.rmtree(folder, ignore_errors=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def extrapolate(small: dict, tiny: dict, full_layers: int) -> dict:
    """From two depths of one architecture: per-layer memory and time, and the full model's."""
    per_layer_weights = (small["weights_gb"] - tiny["weights_gb"]) / (small["layers"] - tiny["layers"])
    fixed_weights = small["weights_gb"] - small["layers"] * per_layer_weights
    per_layer_seconds = (small["engine_seconds"] - tiny["engine_seconds"]) / (small["layers"] - tiny["layers"])
    fixed_seconds = small["engine_seconds"] - small["layers"] * per_layer_seconds
    extra_engine = small["engine_peak_gb"] - small["weights_gb"]  # activations + gradients grow with depth too
    seconds = fixed_seconds + full_layers * per_layer_seconds
    return {"layers": full_layers, "weights_gb": fixed_weights + full_layers * per_layer_weights,
            "engine_peak_gb": fixed_weights + full_layers * per_layer_weights + extra_engine * full_layers / small["layers"],
            "engine_examples_per_s": small["examples"] / seconds, "engine_tokens_per_s": small["tokens"] / seconds,
            "method": "linear in depth from the two measured depths (weights and engine time); activation memory scaled by depth"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="benchmarks/pool_lengths.json")
    parser.add_argument("--archs", nargs="+", default=["llama-3.1-8b", "llama-3.1-70b"], choices=list(ARCHS))
    parser.add_argument("--layers70", type=int, nargs=2, default=[4, 8], help="The two depths a 70B is measured at.")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--dim", type=int, default=32768)
    parser.add_argument("--batch-tokens", type=int, default=8192, help="Tokens per pack (8B).")
    parser.add_argument("--batch-tokens70", type=int, default=2048, help="Tokens per pack for the 70B (its activations are 2x wider).")
    parser.add_argument("--work", default="/tmp/rose_quantized")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lengths = json.loads(Path(args.lengths).read_text())
    report = {"card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "quantization": NF4, "weights": "random (built from the architecture config); speed does not depend on weight values",
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")}, "models": {}}
    for arch in args.archs:
        depths = args.layers70 if arch == "llama-3.1-70b" else [ARCHS[arch]["num_hidden_layers"]]
        budget = args.batch_tokens70 if arch == "llama-3.1-70b" else args.batch_tokens
        runs = [measure(arch, n, Path(args.work) / f"{arch}-{n}", lengths, args, device, budget) for n in depths]
        entry = {"measured": runs}
        if len(runs) == 2:
            entry["extrapolated"] = extrapolate(runs[1], runs[0], ARCHS[arch]["num_hidden_layers"])
        report["models"][arch] = entry
        for r in runs:
            print(f"{arch:14s} {r['layers']:3d} layers  weights {r['weights_gb']:6.1f} GB  engine {r['engine_examples_per_s']:7.1f} ex/s "
                  f"({r['engine_tokens_per_s']:7.0f} tok/s) peak {r['engine_peak_gb']:6.1f} GB  train micro-batch peak {r['train_peak_gb']:6.1f} GB",
                  flush=True)
        if "extrapolated" in entry:
            e = entry["extrapolated"]
            print(f"{arch:14s} {e['layers']:3d} layers (extrapolated)  weights {e['weights_gb']:6.1f} GB  engine {e['engine_examples_per_s']:7.2f} ex/s"
                  f"  peak ~{e['engine_peak_gb']:6.1f} GB", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
