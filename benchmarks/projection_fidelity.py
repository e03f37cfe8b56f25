"""How much do random projections change the influence scores? Each option against exact cosines.

On a seeded sample of the pool, every example's gradient at every warm-up checkpoint goes through
each sink at once: exact cosines with the full validation gradients, and the sparse and dense
projections at the given dimensions. Scores are aggregated exactly as ROSE does (lr-weighted over
checkpoints, mean over shots, max over subtasks); each option's Spearman correlation with the exact
scores and the overlap of its top 5% with the exact top 5% are reported.

    PYTHONPATH=src:benchmarks python benchmarks/projection_fidelity.py configs/shp.yaml --sample 4000 --out docs/benchmarks/projection_fidelity.json
(runs, or reuses, the warm-up and validation stages of that config first)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sketch_shapes import GroupedSparseProjector
from tqdm import tqdm

from rose.config import load_config
from rose.context import Run
from rose.grads import engine
from rose.grads.losses import SFTLoss
from rose.grads.project import MAP_VERSION, make_projector
from rose.grads.sinks import ExactCosines, ProjectedFeatures, RawGradients
from rose.influence import aggregate, checkpoint_weights
from rose.inputs import sample_indices
from rose.pipeline import link_cache, run_stages
from rose.stages.val_grads import target_grads, validation_targets


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def top_overlap(a: np.ndarray, b: np.ndarray, share: float = 0.05) -> float:
    k = max(1, round(share * len(a)))
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--sample", type=int, default=4000)
    parser.add_argument("--dims", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--kinds", nargs="+", default=["sparse", "dense"], choices=["sparse", "dense", "grouped"],
                        help="grouped: the candidate sparse table of sketch_shapes.py (16-coordinate groups), not the projector's")
    parser.add_argument("--seeds", type=int, nargs="+", help="Projection seeds, each its own option (default: the config's).")
    parser.add_argument("--cache", help="Shared stage folder (as compare.cache_dir) to reuse a warm-up from.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    run = Run(config)
    if args.cache:
        run.dir.mkdir(parents=True, exist_ok=True)
        link_cache(run, Path(args.cache))
    run = run_stages(config, ["warmup", "base-logprobs", "val-grads"], base=run)
    subtasks = [p.subtask for p in run.validation.records]
    chosen = sample_indices(len(run.pool.records), args.sample, 123)
    examples = [run.pool.encoded[i] for i in chosen]
    ckpts = run.checkpoints()
    weights = checkpoint_weights([c.mean_lr() for c in ckpts])
    seeds = args.seeds or [config.gradients.seed]
    options = {f"{kind}-{dim}" + (f"-seed{seed}" if args.seeds else ""): (kind, dim, seed)
               for seed in seeds for dim in args.dims for kind in args.kinds}
    projectors = {name: GroupedSparseProjector(run.model.segments, dim, seed) if kind == "grouped" else make_projector(kind, run.model.segments, dim, seed)
                  for name, (kind, dim, seed) in options.items()}
    sims = {name: np.zeros((len(examples), len(subtasks))) for name in ["exact", *options]}
    seconds = dict.fromkeys(sims, 0.0)
    for ckpt, weight in zip(ckpts, weights):
        run.model.load_adapter(ckpt.adapter)
        moments = ckpt.moments(run.model.param_names).to(run.device)
        raw = RawGradients(sum(run.model.segments))
        targets = torch.cat([target_grads(run, t, raw) for t in validation_targets(run)]).to(run.device).split(run.model.segments, dim=1)
        sinks = {"exact": ExactCosines(targets, moments)}
        val_features = {}
        for name, projector in projectors.items():
            sinks[name] = ProjectedFeatures(projector, moments)
            val_features[name] = ProjectedFeatures(projector)([t.float() for t in targets])
        grads = engine.per_example_grads(run.model.model, run.model.param_names, examples, SFTLoss(), config.gradients.batch_tokens, run.device)
        bar = tqdm(total=len(examples), desc=f"checkpoint {ckpt.path.name}", unit="ex")
        for idx, parts in grads:
            bar.update(len(idx))
            parts = list(parts)
            for name, sink in sinks.items():
                torch.cuda.synchronize() if run.device.type == "cuda" else None
                start = time.perf_counter()
                out = sink(iter(parts))
                if name != "exact":
                    out = out @ val_features[name].T
                sims[name][idx] += weight * out.double().cpu().numpy()
                seconds[name] += time.perf_counter() - start
        bar.close()
        del targets, sinks, val_features  # before the next checkpoint's: full-width gradients (4 GB at r=128 on SmolLM2)
    exact, _ = aggregate(sims["exact"], subtasks)
    report = {"config": args.config, "sample": len(examples), "checkpoints": len(ckpts), "validation_items": len(subtasks),
              "lora_params": sum(run.model.segments), "sparse_map_version": MAP_VERSION, "device": torch.cuda.get_device_name() if run.device.type == "cuda" else "cpu",
              "sink_seconds": seconds, "options": {}}
    print(f"{'option':20s} {'spearman':>9s} {'top5% overlap':>14s} {'sink s':>8s}")
    for name in options:
        scores, _ = aggregate(sims[name], subtasks)
        report["options"][name] = {"spearman": spearman(scores, exact), "top5_overlap": top_overlap(scores, exact)}
        print(f"{name:20s} {report['options'][name]['spearman']:9.4f} {report['options'][name]['top5_overlap']:14.3f} {seconds[name]:8.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
