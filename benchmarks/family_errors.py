"""Per model family: how far rose's packed log-probs and per-example LoRA gradients are from the
model's own forward pass and plain autograd (CPU, float32, tiny random-weight models built from
each transformers config; the same models and sequences as `tests/test_families.py`, which holds
every figure under 1e-4).

    python benchmarks/family_errors.py [--out docs/benchmarks/family_errors.json]

Log-prob error: the largest absolute difference in summed response log-probability (nats) over the
test's sequences, packed and padded. Gradient error: the largest entry of |engine - autograd| over
the largest entry of the autograd gradient, worst example (SFT) or pair (DPO).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from rose.encoding import collate, pack
from rose.grads import engine
from rose.grads.losses import DPOLoss, SFTLoss, response_logprobs
from rose.models import lora_parameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_families import BETA, EXAMPLES, FAMILIES, PAIRS, engine_grads, own_logp, relative_error, tiny_model  # noqa: E402


def family_errors(config_class: str, settings: dict) -> dict:
    model = tiny_model(config_class, settings)
    params = list(lora_parameters(model).values())
    n_response = torch.tensor([len(e) - e.n_prompt for e in EXAMPLES])
    want = [own_logp(model, e) for e in EXAMPLES]
    want_sft = [torch.cat([g.flatten() for g in torch.autograd.grad(-lp / n, params, retain_graph=True)])
                for lp, n in zip(want, n_response)]
    with torch.no_grad(), model.disable_adapter():  # the DPO reference: the base model
        reference = torch.tensor([[float(own_logp(model, s)) for s in pair] for pair in PAIRS], dtype=torch.float64)
    margins = [(want[2 * i] - reference[i, 0]) - (want[2 * i + 1] - reference[i, 1]) for i in range(len(PAIRS))]
    want_dpo = [torch.cat([g.flatten() for g in torch.autograd.grad(-F.logsigmoid(BETA * m), params, retain_graph=True)])
                for m in margins]
    want = torch.stack(want).detach()
    with torch.no_grad():
        packed, _ = response_logprobs(model, pack(EXAMPLES))
        padded, _ = response_logprobs(model, collate(EXAMPLES, 0))
    names, cpu = list(lora_parameters(model)), torch.device("cpu")
    sft = engine_grads(engine.per_example_grads(model, names, EXAMPLES, SFTLoss(), 40, cpu))
    dpo = engine_grads(engine.per_example_grads(model, names, PAIRS, DPOLoss(reference, BETA), 10_000, cpu))
    return {"logprob_packed": float((packed - want).abs().max()), "logprob_padded": float((padded - want).abs().max()),
            "sft_grad": max(relative_error(sft[i], g) for i, g in enumerate(want_sft)),
            "dpo_grad": max(relative_error(dpo[i], g) for i, g in enumerate(want_dpo))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="Write the table as JSON here.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {name: family_errors(config_class, settings) for name, (config_class, settings, _) in FAMILIES.items()}
    print(f"{'family':10s} {'log-prob packed':>16s} {'padded':>8s} {'SFT grad':>9s} {'DPO grad':>9s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['logprob_packed']:16.1e} {r['logprob_padded']:8.1e} {r['sft_grad']:9.1e} {r['dpo_grad']:9.1e}")
    if args.out:
        Path(args.out).write_text(json.dumps({"torch": torch.__version__, "families": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
