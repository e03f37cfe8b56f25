"""LoRA training and scoring throughput: the warm-up / fine-tune loop and the evaluation forward pass.

The selection's cost is dominated by gradients, but a comparison fine-tunes and evaluates dozens
of selections, so those loops decide how much of a study fits on a GPU. The model is built from
its architecture config with random weights (speed does not depend on weight values); example
lengths follow the real pool (`pool_lengths.py`), token ids are random.

    python benchmarks/train_throughput.py --lengths lengths.json --out docs/benchmarks/train_throughput.json

On a GPU the decoder's LoRA-free blocks and rotary embedding are compiled, as the stages run them
(`--eager` leaves them eager). Prints a table (examples/s, tokens/s, peak memory for each
micro-batch budget, and the share of the FLOP floor at the card's measured bf16 matmul rate and at
its data-sheet peak) and, with --profile, the GPU's kernel time by category over four training
steps (`engine_profile.py`'s categories); writes JSON.

The floor counts the matmuls that cannot be avoided: a training step with frozen base weights is a
forward and a backward to the activations (4 x body parameters x tokens; the LoRA weights'
own gradients are a rounding error), plus the LM head at the response positions where logits are
formed; the evaluation pass is a forward only (2 x).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch
from engine_profile import kernel_summary, kernel_times, print_summary
from grad_throughput import (
    build,
    floor_flops,
    floor_fractions,
    floor_params,
    make_examples,
    matmul_tflops,
    response_positions,
    spec_tflops,
    timed,
)

from rose.config import TrainConfig
from rose.distributed import Dist
from rose.grads import engine
from rose.models import compile_lora_free_blocks, compile_rotary_embedding, set_adapter_dtype
from rose.train import train_lora


def train_pass(model, examples, settings: TrainConfig) -> None:
    set_adapter_dtype(model, torch.float32)  # trained in float32 over the frozen base, as the stages do
    with tempfile.TemporaryDirectory() as out:
        train_lora(model, examples, settings, Path(out), pad_id=0, seed=0, dist_ctx=Dist(), save_checkpoints=False,
                   log=lambda _: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", required=True, help="JSON list of [prompt_tokens, total_tokens] from the real pool.")
    parser.add_argument("--arch", default="smollm2-135m")
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="Examples per optimizer step.")
    parser.add_argument("--micro-tokens", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--eval-tokens", type=int, default=32768, help="Token budget of the evaluation forward pass.")
    parser.add_argument("--profile", action="store_true", help="Kernel time by category over four training steps.")
    parser.add_argument("--eager", action="store_true", help="Leave the LoRA-free blocks and RoPE eager on a GPU.")
    parser.add_argument("--out", default="docs/benchmarks/train_throughput.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {card}, torch {torch.__version__}", flush=True)
    lengths = json.loads(Path(args.lengths).read_text())
    model = build(args.arch, args.rank, args.alpha, device, dtype)
    compiled = device.type == "cuda" and not args.eager
    if compiled:  # as the stages run on a GPU (model.compile_blocks)
        compile_lora_free_blocks(model)
        compile_rotary_embedding(model)
    examples = make_examples(lengths, min(args.examples, len(lengths)), args.max_len, model.config.vocab_size, 0)
    tokens, positions = sum(len(e) for e in examples), sum(response_positions(e) for e in examples)
    tflops, spec = matmul_tflops(device), spec_tflops(card)
    body, head = floor_params(model)
    report: dict = {"card": card, "torch": torch.__version__, "arch": args.arch, "lora_r": args.rank, "compiled": compiled,
                    "weights": "random (built from the architecture config); speed does not depend on weight values",
                    "examples": len(examples), "mean_tokens": tokens / len(examples), "batch_size": args.batch_size,
                    "matmul_tflops_bf16": tflops, "spec_tflops_bf16": spec,
                    "flop_floor": {"formula": "passes x (body_params x tokens + lm_head_params x logit_positions): 4 passes "
                                   "for training (forward, backward to the activations), 2 for evaluation",
                                   "body_params": body, "lm_head_params": head, "tokens": tokens, "logit_positions": positions},
                    "modes": {}}

    def record(name: str, seconds: float, peak: float, passes: int) -> None:
        flops = floor_flops(passes, body, head, tokens, positions)
        row = {"seconds": seconds, "examples_per_s": len(examples) / seconds, "tokens_per_s": tokens / seconds,
               **floor_fractions(flops, seconds, tflops, spec), "peak_memory_gb": peak}
        report["modes"][name] = row
        print(f"  {name:24s} {row['examples_per_s']:9.1f} ex/s {row['tokens_per_s']:11.0f} tok/s  floor "
              f"{row['floor_fraction']:6.1%} ({row['floor_fraction_spec']:6.1%} of spec)  peak {peak:6.1f} GB", flush=True)

    warm = examples[: 4 * args.batch_size]
    for micro in args.micro_tokens:
        settings = TrainConfig(epochs=1, lr=1e-4, batch_size=args.batch_size, micro_batch_tokens=micro)
        train_pass(model, warm, settings)  # kernels chosen, allocator settled
        seconds, peak = timed(lambda s=settings: train_pass(model, examples, s), device)
        record(f"train_micro{micro}", seconds, peak, 4)
    set_adapter_dtype(model, dtype)
    model.eval()
    engine.sequence_logprobs(model, warm, args.eval_tokens, device)
    seconds, peak = timed(lambda: engine.sequence_logprobs(model, examples, args.eval_tokens, device), device)
    record("eval_logprobs", seconds, peak, 2)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        settings = TrainConfig(epochs=1, lr=1e-4, batch_size=args.batch_size, micro_batch_tokens=args.micro_tokens[-1])
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            train_pass(model, warm, settings)
        summary = kernel_summary(kernel_times(prof, device.type == "cuda"))
        report["profile"] = {"steps": len(warm) // args.batch_size, "micro_batch_tokens": args.micro_tokens[-1], **summary}
        print_summary(summary, 25)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
