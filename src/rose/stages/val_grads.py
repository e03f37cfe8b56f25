"""val-grads: per-pair validation gradients at every warm-up checkpoint, projected and normalised.

They are plain (SGD) gradients of the selection method's validation loss (`Selector.validation_loss`):
ROSE's DPO loss of each pair, whose reference is the base model (adapters off, log-probs from
base-logprobs), or LESS's SFT loss of the chosen response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Stage, register_stage, work
from .base_logprobs import read_base_logprobs

if TYPE_CHECKING:
    import torch

    from ..context import Run
    from ..grads.losses import ItemLoss
    from ..grads.project import Projector
    from ..store import StageDir


def projector(run: Run) -> Projector:
    from ..grads.project import make_projector

    g = run.config.gradients
    return make_projector(g.projection, run.model.segments, g.dim, g.seed)


def validation_items(run: Run) -> tuple[list, ItemLoss]:
    """The validation items and the loss whose gradients the selection method takes of them."""
    import torch

    from ..grads.losses import DPOLoss, SFTLoss

    validation = run.validation
    if run.selector.validation_loss == "sft":  # LESS: the chosen responses
        return [chosen for chosen, _ in validation.encoded], SFTLoss()
    # ROSE: each pair, against the base model
    return validation.encoded, DPOLoss(torch.from_numpy(read_base_logprobs(run, "validation")), run.config.gradients.dpo_beta)


def validation_grads(run: Run, sink) -> torch.Tensor:
    """[M, sink.out_dim]: the validation gradients at the loaded checkpoint, through `sink`."""
    import torch

    from ..grads import engine

    cfg, model = run.config.gradients, run.model
    items, loss = validation_items(run)
    out = torch.zeros(len(items), sink.out_dim, dtype=torch.float64)
    for idx, parts in engine.per_example_grads(model.model, model.param_names, items, loss, cfg.batch_tokens, run.device):
        out[idx] = sink(parts).double().cpu()
    return out


def val_grads(run: Run, sd: StageDir) -> dict:
    from tqdm.auto import tqdm

    from ..grads.sinks import ProjectedFeatures
    from ..numerics import check_validation_features
    from ..store import save_array

    ckpts, pairs = run.checkpoints(), run.validation.records
    info = {"ids": [p.id for p in pairs], "subtasks": [p.subtask for p in pairs], "checkpoints": [c.path.name for c in ckpts]}
    if run.config.gradients.projection == "none":  # exact scoring takes full validation gradients in train-grads
        return info
    sink = ProjectedFeatures(projector(run))
    for ckpt in tqdm(ckpts, desc="validation gradients", unit="ckpt", disable=not run.dist.is_main):
        run.model.load_adapter(ckpt.adapter)
        grads = validation_grads(run, sink)
        check_validation_features(grads.numpy(), info["ids"], "val-grads", ckpt.path.name)
        if run.dist.is_main:  # a sharded model's processes all compute them (`Stage.on_every_process`)
            save_array(sd.path / ckpt.path.name / "grads.npy", grads.float().numpy())
    items, _ = validation_items(run)
    sequences = [s for item in items for s in (item if isinstance(item, tuple) else (item,))]
    return {**info, **work(len(items), sequences, len(ckpts))}


def _key(k) -> list:
    from ..grads.project import MAP_VERSION

    loss = k.selector.validation_loss
    return [k.stage("warmup"), k.projection(MAP_VERSION), loss, k.config.gradients.dpo_beta if loss == "dpo" else None, k.validation]


register_stage(Stage(
    "val-grads", "grads/val", "Per-pair validation gradients (DPO for ROSE, SFT of the chosen response for LESS) at each checkpoint, projected.",
    val_grads, key=_key, after=("warmup", "base-logprobs"), reads=frozenset({"validation"}), gradients=True))
