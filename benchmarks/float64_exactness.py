"""The engine's float64 per-example gradients against plain autograd on this CPU: as a float64 model
is loaded, and with its RMSNorm and rotary embeddings kept in float64.

transformers computes RMSNorm and the rotary cos/sin in float32 even in a float64 model, so two
float64 paths through it can land on different float32 roundings, depending on the GEMM blockings
the CPU's kernels pick for different row counts. The suite's float64 tests therefore compare
models made truly float64 (`tests/float64_model.py`); this prints how far the engine is from
autograd both ways, on a random-weight SmolLM2-architecture model with LoRA on q/k/v/o and a few
pool-length examples (random token ids), with the CPU it ran on.

    python benchmarks/float64_exactness.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from grad_throughput import build, make_examples

from rose.encoding import Encoded
from rose.grads import engine, reference
from rose.models import lora_parameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from float64_model import truly_float64  # noqa: E402  (the suite's helper, not a second copy)


def cpu_name() -> str:
    """The CPU's model name (Linux) and the vector instructions torch's kernels use on it."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def max_rel_err(model: torch.nn.Module, examples: list[Encoded]) -> float:
    """Largest per-example relative error of the engine's gradients against one backward per example."""
    params = lora_parameters(model)
    want = torch.stack(list(reference.sft_grads(model, list(params.values()), examples, 0)))
    got = torch.zeros_like(want)
    for idx, parts in engine.sft_grads(model, list(params), examples, 10_000, torch.device("cpu")):
        got[idx] = torch.cat(list(parts), dim=1)
    return float(((got - want).norm(dim=1) / want.norm(dim=1)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="benchmarks/pool_lengths.json")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = build("smollm2-135m", args.rank, 4 * args.rank, torch.device("cpu"), torch.float64)
    lengths = json.loads(Path(args.lengths).read_text())
    examples = make_examples(lengths, args.examples, args.max_len, model.config.vocab_size, args.seed)
    print(f"{cpu_name()}, torch {torch.__version__}: {len(examples)} examples, "
          f"{sum(len(e) for e in examples)} tokens, LoRA r={args.rank}")
    print(f"  as loaded (RMSNorm and rotary in float32): max relative error {max_rel_err(model, examples):.1e}")
    truly_float64(model)
    print(f"  truly float64 (tests/float64_model.py):    max relative error {max_rel_err(model, examples):.1e}")


if __name__ == "__main__":
    main()
