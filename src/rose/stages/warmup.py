"""warmup: LoRA-train the base model on a random share of the pool, keeping every epoch's checkpoint
(adapter, AdamW moments by parameter name, the epoch's learning rates) for the gradient stages."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import TYPE_CHECKING

from ..inputs import sample_indices
from . import Stage, register_stage, work

if TYPE_CHECKING:
    from ..context import Run
    from ..store import StageDir

log = logging.getLogger("rose")


def warmup(run: Run, sd: StageDir) -> dict:
    from ..train import train_lora

    cfg, pool = run.config, run.pool
    n = len(pool.records)
    subset = sample_indices(n, max(1, math.ceil(cfg.warmup.fraction * n)), cfg.seed + 10)
    log.info("warm-up: %d of %d pool examples, %d epochs", len(subset), n, cfg.warmup.epochs)
    ckpts = train_lora(run.model.fresh_adapters(), [pool.encoded[i] for i in subset], cfg.warmup, sd.path, run.model.pad_id,
                       cfg.seed, run.dist, save_checkpoints=True, log=log.info,
                       on_epoch=partial(run.tracker.log_steps, "warmup"), stage="warmup")
    return {"checkpoints": [c.path.name for c in ckpts], "subset": [pool.records[i].id for i in subset],
            **work(len(subset), [pool.encoded[i] for i in subset], cfg.warmup.epochs)}


register_stage(Stage(
    "warmup", "warmup", "LoRA-train on a random share of the pool, saving every epoch's adapter, AdamW state and lrs.",
    warmup, key=lambda k: [k.pool, k.lora, k.training(k.config.warmup)],
    reads=frozenset({"pool"}), gradients=True, all_processes=True))
