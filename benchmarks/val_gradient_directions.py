"""How different are ROSE's and LESS's validation gradients? Per pair, at a given adapter.

ROSE's target direction for a pair is the DPO-loss gradient, a multiple of
grad log pi(chosen) - grad log pi(rejected) (summed over response tokens); LESS's is the SFT-loss
gradient of the chosen response. When the rejected response's gradient is small or points
elsewhere, the two nearly coincide and so will the selections. This prints, per task, the cosine
between the two directions and between the chosen and rejected gradients, and writes JSON.

    python benchmarks/val_gradient_directions.py configs/shp.yaml configs/hh.yaml --out docs/benchmarks/val_gradient_directions.json

Without --adapter the adapters are fresh (B = 0: the model is the base model and only the B
matrices have gradients), which is the point where ROSE's DPO reference equals the policy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rose.config import load_config
from rose.context import Run
from rose.grads import engine
from rose.grads.losses import DPOLoss, SFTLoss


def _collect(batches, n: int) -> torch.Tensor:
    out = None
    for idx, parts in batches:
        g = torch.cat([p.double() for p in parts], dim=1)
        out = torch.zeros(n, g.shape[1], dtype=torch.float64) if out is None else out
        out[idx] = g.cpu()
    return out


def directions(config_path: str, overrides: list[str], adapter: str | None) -> dict:
    run = Run(load_config(config_path, overrides))
    if adapter:
        run.model.load_adapter(Path(adapter))
    model, names = run.model.model, run.model.param_names
    pairs, encoded = run.validation.records, run.validation.encoded
    budget = run.config.gradients.batch_tokens
    with model.disable_adapter():
        ref, _ = engine.sequence_logprobs(model, [s for p in encoded for s in p], budget, run.device)
    dpo = _collect(engine.per_example_grads(model, names, encoded, DPOLoss(ref.view(-1, 2), 0.1), budget, run.device), len(pairs))
    chosen = _collect(engine.per_example_grads(model, names, [c for c, _ in encoded], SFTLoss(), budget, run.device), len(pairs))
    rejected = _collect(engine.per_example_grads(model, names, [r for _, r in encoded], SFTLoss(), budget, run.device), len(pairs))
    n_c = torch.tensor([len(c) - c.n_prompt for c, _ in encoded], dtype=torch.float64)
    n_r = torch.tensor([len(r) - r.n_prompt for _, r in encoded], dtype=torch.float64)
    # SFT gradients are of the mean NLL; scale back to summed log-probs to compare their sizes
    ratio = (rejected.norm(dim=1) * n_r) / (chosen.norm(dim=1) * n_c)
    stats = {
        "cos_dpo_vs_sft_chosen": F.cosine_similarity(dpo, chosen, dim=1).numpy(),  # both descend on -log pi(chosen)
        "cos_chosen_vs_rejected": F.cosine_similarity(chosen, rejected, dim=1).numpy(),
        "norm_rejected_over_chosen": ratio.numpy(),
    }
    return {"config": config_path, "pairs": len(pairs), "adapter": adapter or "fresh (B = 0)",
            **{k: {"median": float(np.median(v)), "mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
               for k, v in stats.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--adapter", help="Adapter folder to take the gradients at (e.g. a warm-up checkpoint's adapter/).")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Config overrides for every config.")
    parser.add_argument("--out", default="docs/benchmarks/val_gradient_directions.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {"torch": torch.__version__, "tasks": [directions(c, args.set, args.adapter) for c in args.configs]}
    print(f"{'config':22s} {'pairs':>5s} {'cos(DPO, SFT chosen)':>22s} {'cos(chosen, rejected)':>22s} {'|g_r| / |g_c|':>14s}   (medians)")
    for t in report["tasks"]:
        print(f"{t['config']:22s} {t['pairs']:5d} {t['cos_dpo_vs_sft_chosen']['median']:22.3f} "
              f"{t['cos_chosen_vs_rejected']['median']:22.3f} {t['norm_rejected_over_chosen']['median']:14.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
