"""finetune: LoRA-train the base model on the selection: the model whose quality the selection is judged by."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from . import Stage, register_stage, work
from .select import selected_indices

if TYPE_CHECKING:
    from ..context import Run
    from ..store import StageDir

log = logging.getLogger("rose")


def finetune(run: Run, sd: StageDir) -> dict:
    from ..train import train_lora

    chosen = selected_indices(run)
    ckpts = train_lora(run.model.fresh_adapters(), [run.pool.encoded[i] for i in chosen], run.config.finetune, sd.path,
                       run.model.pad_id, run.config.seed + 1 + run.config.finetune.seed, run.dist, save_checkpoints=False,
                       log=log.info, on_epoch=partial(run.tracker.log_steps, "finetune"), stage="finetune")
    return {"adapter": str(ckpts[-1].adapter.relative_to(sd.path)), "n_train": len(chosen),
            **work(len(chosen), [run.pool.encoded[i] for i in chosen], run.config.finetune.epochs)}


register_stage(Stage(
    "finetune", "finetune", "LoRA-train the base model on the selection.",
    finetune, key=lambda k: [k.stage("select"), k.lora, k.training(k.config.finetune)],
    after=("select",), reads=frozenset({"pool"}), all_processes=True))
