"""train-grads: per-example SFT gradients of the pool at every checkpoint, in Adam's update direction.

Stored as projected unit vectors [N, d], or, with gradients.projection=none, as exact cosines
[N, M] with the full validation gradients. Written in shards, each process taking every world-th
shard; finished shards are kept, so a killed run resumes where it stopped. A model sharded over the
processes (model.shard=fsdp) needs every process in each pass: all walk every shard, each taking
every world-th pack of it, and the main process writes the shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Stage, register_stage, work
from .val_grads import preconditioner, projector, target_grads, validation_targets

if TYPE_CHECKING:
    import numpy as np

    from ..context import Run
    from ..store import StageDir


def train_grads(run: Run, sd: StageDir) -> dict:
    import time

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..grads.adam import adam_direction
    from ..grads.sinks import ExactCosines, ProjectedFeatures, RawGradients
    from ..numerics import check_validation_features, pool_rows_to_drop
    from ..store import open_shards, save_array, shard_name, shard_ranges

    cfg, model = run.config.gradients, run.model
    ckpts, encoded = run.checkpoints(), run.pool.encoded
    exact = cfg.projection == "none"
    if exact:
        run.require("val-grads")  # its manifest names the validation pairs the cosines are with
    features = None if exact else projector(run)
    shards = shard_ranges(len(encoded), cfg.shard_size)
    mine = shards if run.sharded else [s for i, s in enumerate(shards) if i % run.dist.world == run.dist.rank]
    bar = tqdm(total=len(ckpts) * sum(b - a for a, b in mine), desc="train gradients", unit="ex", disable=not run.dist.is_main)
    seconds = {}  # wall time per checkpoint computed by this call: the first also carries compilation and kernel tuning
    for ckpt in ckpts:
        folder = sd.path / ckpt.path.name
        todo = [(a, b) for a, b in mine if not (folder / shard_name(a, b)).is_file()]
        bar.update(sum(b - a for a, b in mine) - sum(b - a for a, b in todo))
        if not todo:
            continue
        started = time.perf_counter()
        model.load_adapter(ckpt.adapter)
        moments = ckpt.moments(model.param_names).to(run.device)
        if exact:  # the cosines with every validation target's rows, target after target
            raw, ids = RawGradients(sum(model.segments)), [p.id for p in run.validation.records]
            targets = []
            for target in validation_targets(run):
                targets.append(target_grads(run, target, raw))
                check_validation_features(targets[-1].numpy(), ids, "train-grads", ckpt.path.name)
            targets = torch.cat(targets).to(run.device)
            if (transform := preconditioner(run, ckpt)) is not None:
                targets = adam_direction(targets, transform)
            sink = ExactCosines(targets.split(model.segments, dim=1), moments)
        else:
            sink = ProjectedFeatures(features, moments)
        for start, stop in todo:
            # unit vectors lose nothing that matters in float16; cosines stay float32
            out = _shard_features(run, sink, encoded[start:stop], np.float32 if exact else np.float16, bar)
            if run.dist.is_main or not run.sharded:
                save_array(folder / shard_name(start, stop), out)
        seconds[ckpt.path.name] = time.perf_counter() - started
    bar.close()
    run.dist.barrier()  # every shard is written; each process checks them all, so that all raise alike
    ids = [e.id for e in run.pool.records]
    shards = {c.path.name: open_shards(sd.path / c.path.name, len(encoded), cfg.shard_size) for c in ckpts}
    dropped = pool_rows_to_drop(shards, ids, "train-grads")
    return {"n": len(encoded), "shard_size": cfg.shard_size, "exact": exact, "checkpoints": [c.path.name for c in ckpts],
            "dropped": [ids[i] for i in dropped], "checkpoint_seconds": seconds, **work(len(encoded), encoded, len(ckpts))}


def _shard_features(run: Run, sink, items: list, dtype, bar) -> np.ndarray:
    """[len(items), sink.out_dim]: one shard's rows through `sink`. A sharded model's processes each
    compute every world-th pack (`engine.per_example_grads`) and sum their rows, which are zero
    where another process computed them, so the sum is exact."""
    import numpy as np
    import torch

    from ..grads import engine
    from ..grads.losses import SFTLoss

    cfg, model = run.config.gradients, run.model
    rank, world = (run.dist.rank, run.dist.world) if run.sharded else (0, 1)
    out, done = np.zeros((len(items), sink.out_dim), dtype=dtype), 0
    for idx, parts in engine.per_example_grads(model.model, model.param_names, items, SFTLoss(), cfg.batch_tokens, run.device,
                                               rank, world):
        out[idx] = sink(parts).float().cpu().numpy()
        bar.update(len(idx))
        done += len(idx)
    if world == 1:
        return out
    bar.update(len(items) - done)  # the other processes' rows
    return run.dist.sum(torch.from_numpy(out)).numpy().astype(dtype)


def _key(k) -> list:
    from ..grads.project import MAP_VERSION

    exact = k.config.gradients.projection == "none"
    return [k.stage("warmup"), k.projection(MAP_VERSION), k.stage("val-grads") if exact else None]


register_stage(Stage(
    "train-grads", "grads/train", "Per-example SFT gradients of the pool at each checkpoint (Adam direction, projected).",
    train_grads, key=_key, after=("warmup",), reads=frozenset({"pool", "validation"}), gradients=True, all_processes=True))
