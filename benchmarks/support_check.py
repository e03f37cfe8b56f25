"""The support check (`rose.support`) on a real model: how far rose's packed passes and the model's
own forward pass, both in the run's dtype, are from the model's own float32 forward and autograd,
with fresh adapters (B = 0, as every run's check meets them) and with trained-looking ones (B ~
N(0, 0.02)), and whether the check accepts the model.

    python benchmarks/support_check.py --model gemma3-270m --dtype bfloat16 --device cpu \
        --out docs/benchmarks/support_check_gemma3_cpu.json

Prints a table and writes JSON. Nothing is timed but the check itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rose.config import LoraConfig, ModelConfig
from rose.models import add_lora, load_model, pick_device, set_adapter_dtype
from rose.support import measure_support, probe_sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m", help="model.name: built-in, folder, hub id or .gguf")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-length", type=int, default=2048, help="model.max_length (sets the probe's length past the window)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = pick_device(args.device)
    model = add_lora(load_model(ModelConfig(name=args.model, dtype=args.dtype, device=str(device))),
                     LoraConfig(r=args.rank, alpha=4 * args.rank, dropout=0.0))
    set_adapter_dtype(model, getattr(torch, args.dtype))
    rows = []
    for adapters in ("fresh", "trained"):
        if adapters == "trained":
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.02)
        start = time.perf_counter()
        report = measure_support(model, probe_sequences(model, args.max_length))
        rows.append({"adapters": adapters, "seconds": time.perf_counter() - start, "reference_dtype": str(report.reference_dtype),
                     "rose_logprob": report.rose.logprob, "own_logprob": report.own.logprob, "limit_logprob": report.limit("logprob"),
                     "rose_gradient": report.rose.gradient, "own_gradient": report.own.gradient, "limit_gradient": report.limit("gradient"),
                     "accepted": not report.disagreements()})
    print(f"{args.model} in {args.dtype} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"errors against the own forward in {rows[0]['reference_dtype']}:")
    print("| adapters | rose log-prob (nats/token) | own | limit | rose gradient (rel.) | own | limit | accepted |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['adapters']} | {r['rose_logprob']:.3g} | {r['own_logprob']:.3g} | {r['limit_logprob']:.3g} | "
              f"{r['rose_gradient']:.3g} | {r['own_gradient']:.3g} | {r['limit_gradient']:.3g} | {r['accepted']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "dtype": args.dtype, "device": str(device),
                                        "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
