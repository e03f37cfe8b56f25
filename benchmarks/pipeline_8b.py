"""Every stage of `rose run` on an 8B model: throughput and share of the FLOP floor, stage by stage.

A Llama-3.1-8B-architecture model with random bf16 weights is built on the GPU and saved as a
local model folder (throughput does not depend on the weights' values), with the SmolLM2
tokenizer and the vocabulary set to match it. The pool is a seeded sample of real examples from
the data bundle, the target the SHP 5-shot preference set; held-out pairs and test answers come
from the same bundle.

    python benchmarks/pipeline_8b.py --data ../shared/data --tokenizer TOKENIZER_DIR --work /tmp/p8b \\
        --stages warmup base-logprobs val-grads train-grads        # (one call of the GPU machine)
    python benchmarks/pipeline_8b.py --data ../shared/data --tokenizer TOKENIZER_DIR --work /tmp/p8b \\
        --out docs/benchmarks/pipeline_8b.json                     # the rest, then the table

A stage that is already complete in `--work` is skipped, so the run can be split over calls.
Per stage it reports examples/s, tokens/s, peak GPU memory, wall time and the share of the FLOP
floor, from what the stage's manifest says it processed (`work`): training and gradient stages
count a forward and a backward to the inputs, 4 x B x tokens + 4 x H x logit positions; forward
passes 2 x B x tokens + 2 x H x logit positions (B: decoder parameters including LoRA, without
the embedding and LM head; H: the LM head's vocab x hidden; logits are formed at response tokens
only). The floor is taken at the card's bf16 matmul rate, measured first (8192^3, median of 10),
and at its data-sheet dense bf16 peak (`floor_fraction_spec`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import yaml
from grad_throughput import (  # the card's bf16 rates, as the throughput benchmark takes them
    floor_flops,
    floor_fractions,
    matmul_tflops,
    spec_tflops,
)
from stage_table import stage_rows

ARCHS = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 max_position_embeddings=4096, tie_word_embeddings=False),  # a CPU check of this script
}
FORWARD_ONLY = {"base-logprobs", "evaluate"}


def build_model(folder: Path, tokenizer_dir: Path, arch: str, layers: int | None) -> None:
    """A random-weight Llama-3.1-8B (bf16) with the tokenizer's vocabulary, saved as a model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         **{**ARCHS[arch], **({"num_hidden_layers": layers} if layers else {})})
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp, max_shard_size="5GB")
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_config(args, model_dir: Path) -> Path:
    data = Path(args.data).resolve()
    shp = data / "validation/shp"
    config = {
        "run_dir": str(Path(args.work) / "run"),
        "seed": 0,
        "model": {"name": str(model_dir), "dtype": "auto", "max_length": 2048, "overlong": "skip"},  # bf16 on a GPU
        "lora": {"r": args.rank, "alpha": 4 * args.rank, "dropout": 0.1},  # the paper's r=128, alpha=512
        "data": {
            "pool": [str(p) for p in sorted((data / "train").glob("*/*.jsonl.gz"))],
            "pool_limit": args.pool,
            "validation": {"paths": [str(shp / "shp_5_shot/shp_5_shot_preference.json.gz")], "format": "rose", "pairs": "target",
                           "subtasks": 18},
            "heldout": {"paths": [str(shp / "shp_30_shot/shp_30_shot_preference.json.gz")], "format": "rose", "pairs": "all",
                        "subtasks": 18, "limit": args.heldout},
            "test": [str(p) for p in sorted((data / "test/shp").glob("*.json.gz"))],
            "test_limit": args.tests,
        },
        "warmup": {"fraction": args.warmup_fraction, "epochs": 4, "lr": 2e-5, "batch_size": 64, "micro_batch_tokens": args.train_tokens},
        "gradients": {"projection": "sparse", "dim": 32768, "batch_tokens": args.grad_tokens},
        "select": {"fraction": args.select_fraction},
        "finetune": {"epochs": 1, "lr": 2e-5, "batch_size": 64, "micro_batch_tokens": args.train_tokens},
        "eval": {"batch_size": 8},
    }
    path = Path(args.work) / "pipeline_8b.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def parameter_counts(model_dir: Path, rank: int) -> tuple[int, int]:
    """(B, H): the decoder parameters a token passes through, LoRA adapters on q/k/v/o included
    (r x (in + out) each), and the LM head's vocab x hidden."""
    config = json.loads((model_dir / "config.json").read_text())
    h, f, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    q = config["num_attention_heads"] * config["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h
    lora = rank * ((h + q) + 2 * (h + kv) + (q + h))
    return n * (per_layer + lora) + h, config["vocab_size"] * h


def stage_table(run_dir: Path, body: int, head: int, tflops: float, spec: float) -> dict:
    """`stage_table.stage_rows` with each stage's share of the FLOP floor at both rates."""
    rows = stage_rows(run_dir)
    for name, row in rows.items():
        if "examples" in row:
            passes = 2 if name in FORWARD_ONLY else 4
            flops = floor_flops(passes, body, head, row["tokens"], row["logit_positions"])
            row |= {**floor_fractions(flops, row["seconds"], tflops, spec),
                    "floor_kind": "forward" if passes == 2 else "forward+backward"}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="The data bundle (train/, validation/, test/).")
    parser.add_argument("--tokenizer", required=True, help="A tokenizer folder (SmolLM2's).")
    parser.add_argument("--work", required=True, help="Model folder, config and run directory go here.")
    parser.add_argument("--stages", nargs="*", help="Run only these stages now (default: every stage).")
    parser.add_argument("--pool", type=int, default=5000, help="Pool examples (seeded sample of the bundle's pool).")
    parser.add_argument("--warmup-fraction", type=float, default=0.05,
                        help="Share of the pool the warm-up trains on (0.4 of 5,000: 2,000 examples, a realistic run length).")
    parser.add_argument("--select-fraction", type=float, default=0.05, help="Share of the pool selected and fine-tuned on.")
    parser.add_argument("--heldout", type=int, default=500, help="Held-out SHP pairs evaluated.")
    parser.add_argument("--tests", type=int, default=300, help="SHP test prompts evaluated.")
    parser.add_argument("--train-tokens", type=int, default=16384, help="Tokens per training micro-batch.")
    parser.add_argument("--grad-tokens", type=int, default=16384, help="Tokens per gradient/evaluation pack.")
    parser.add_argument("--arch", default="llama-3.1-8b", choices=list(ARCHS))
    parser.add_argument("--layers", type=int, help="Fewer decoder layers (a depth-reduced model).")
    parser.add_argument("--rank", type=int, default=128, help="LoRA rank (alpha = 4 x rank, as the paper's 128/512).")
    parser.add_argument("--out", help="Write the table as JSON here.")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    started = time.perf_counter()
    build_model(model_dir, Path(args.tokenizer), args.arch, args.layers)
    print(f"model folder ready in {time.perf_counter() - started:.0f} s: {model_dir}", flush=True)
    config = write_config(args, model_dir)
    from rose.config import load_config
    from rose.pipeline import run_stages

    run_stages(load_config(config), args.stages or None)
    tflops = matmul_tflops(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    body, head = parameter_counts(model_dir, args.rank)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    spec = spec_tflops(card)
    rows = stage_table(Path(args.work) / "run", body, head, tflops, spec)
    print(f"\n{card}, bf16 matmul {tflops:.0f} TFLOP/s measured, {spec:.0f} on the data sheet; B = {body / 1e9:.3f} B, H = {head / 1e9:.3f} B")
    print(f"{'stage':14s} {'examples/s':>11s} {'tokens/s':>10s} {'floor':>7s} {'spec':>7s} {'peak GB':>8s} {'wall s':>8s}")
    for name, r in rows.items():
        rate = (f"{r['examples_per_s']:11.1f} {r['tokens_per_s']:10.0f} {r['floor_fraction']:7.1%} {r['floor_fraction_spec']:7.1%}"
                if "examples" in r else " " * 38)
        print(f"{name:14s} {rate} {r['peak_gpu_gb'] or float('nan'):8.1f} {r['seconds']:8.1f}")
    if args.out:
        report = {"card": card, "torch": torch.__version__, "matmul_tflops_bf16": tflops, "spec_tflops_bf16": spec, "body_params": body, "lm_head_params": head,
                  "weights": "random (built from the Llama-3.1-8B config with the SmolLM2 tokenizer's vocabulary)",
                  "settings": {k: v for k, v in vars(args).items() if k not in ("data", "tokenizer", "work", "out")}, "stages": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if not args.stages and args.out:
        shutil.rmtree(model_dir, ignore_errors=True)  # 15 GB


if __name__ == "__main__":
    main()
