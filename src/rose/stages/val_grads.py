"""val-grads: per-pair validation gradients at every warm-up checkpoint, projected and normalised.

They are plain (SGD) gradients of the selection method's validation loss (`Selector.validation_loss`):
ROSE's DPO loss of each pair, whose reference is the base model (adapters off, log-probs from
base-logprobs), taken without its per-pair sigmoid factor (`DPOLoss.direction`: the same
normalised feature, and no zero where the factor underflows), or LESS's SFT loss of the chosen
response. The method's options
(`SelectionOptions`) can instead take the chosen and rejected responses' gradients apart
(`sides=apart`), the DPO margin from per-token log-probs (`dpo_logprobs=mean`) and divide the
gradients by Adam's sqrt(v + eps) (`precondition=adam`). For DPO it also stores each pair's
sigmoid weight at the checkpoint, for `checkpoint_weights=lr_dpo`, from the log-probs that the gradient
pass formed (no second forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from . import Stage, register_stage, work
from .base_logprobs import read_base_logprobs

if TYPE_CHECKING:
    import torch

    from ..context import Run
    from ..grads.adam import AdamMoments
    from ..grads.losses import ItemLoss
    from ..grads.project import Projector
    from ..selectors import SelectionOptions, Selector
    from ..store import StageDir
    from ..train import Checkpoint

DPO_WEIGHTS = "dpo_weights.npy"  # [M] sigma(-beta margin) of each pair at the checkpoint


def target_kind(selector: Selector, options: SelectionOptions) -> str:
    """What the validation gradients are of: 'sft' (the chosen responses: LESS, or rose with
    sides=chosen, which then shares LESS's stage), 'dpo' (each pair's DPO loss) or 'apart' (the
    chosen and the rejected responses, each on its own)."""
    if selector.validation_loss == "sft" or options.sides == "chosen":
        return "sft"
    return "apart" if options.sides == "apart" else "dpo"


@dataclass(frozen=True)
class ValidationTarget:
    """One set of validation gradients: the file it is stored in (grads/val/epoch-K/<name>.npy), its
    items (sequences or pairs, one row each) and the loss whose gradient each row is."""

    name: str
    items: list
    loss: ItemLoss


def validation_targets(run: Run) -> list[ValidationTarget]:
    """The validation gradients the selection method scores against, in the order of their files."""
    import torch

    from ..grads.losses import DPOLoss, SFTLoss

    pairs = run.validation.encoded
    kind = target_kind(run.selector, run.options)
    if kind == "sft":
        return [ValidationTarget("grads", [chosen for chosen, _ in pairs], SFTLoss())]
    if kind == "apart":
        return [ValidationTarget("chosen", [chosen for chosen, _ in pairs], SFTLoss()),
                ValidationTarget("rejected", [rejected for _, rejected in pairs], SFTLoss())]
    reference = torch.from_numpy(read_base_logprobs(run, "validation"))
    loss = DPOLoss(reference, run.config.gradients.dpo_beta, run.options.dpo_logprobs == "mean", direction=True)
    return [ValidationTarget("grads", pairs, loss)]  # direction: the features are normalised, and it cannot underflow


def projector(run: Run) -> Projector:
    from ..grads.project import make_projector

    g = run.config.gradients
    return make_projector(g.projection, run.model.segments, g.dim, g.seed)


def preconditioner(run: Run, ckpt: Checkpoint) -> AdamMoments | None:
    """The transform of the validation gradients at a checkpoint: Adam's preconditioner from its
    moments (select.precondition=adam), or none (plain gradients, the paper's; no moments read)."""
    if run.options.precondition != "adam":
        return None
    return ckpt.moments(run.model.param_names).to(run.device).preconditioner()


def target_grads(run: Run, target: ValidationTarget, sink) -> torch.Tensor:
    """[M, sink.out_dim]: one target's validation gradients at the loaded checkpoint, through `sink`."""
    import torch

    from ..grads import engine

    cfg, model = run.config.gradients, run.model
    out = torch.zeros(len(target.items), sink.out_dim, dtype=torch.float64)
    for idx, parts in engine.per_example_grads(model.model, model.param_names, target.items, target.loss, cfg.batch_tokens,
                                               run.device):
        out[idx] = sink(parts).double().cpu()
    return out


def policy_logprobs(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """([M, 2] summed response log-probs, [M, 2] token counts) of each validation pair's (chosen,
    rejected) under the loaded checkpoint, by a forward pass: for when no gradients are taken."""
    from ..grads.engine import sequence_logprobs

    pairs = run.validation.encoded
    logps, counts = sequence_logprobs(run.model.model, [s for pair in pairs for s in pair], run.config.gradients.batch_tokens,
                                      run.device)
    return logps.view(-1, 2), counts.view(-1, 2)


def dpo_weights(run: Run, logps: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[M] each validation pair's DPO sigmoid weight from its [M, 2] policy log-probs and token counts."""
    import torch

    from ..grads.losses import dpo_sigmoid_weights

    reference = torch.from_numpy(read_base_logprobs(run, "validation"))
    return dpo_sigmoid_weights(logps, reference, counts, run.config.gradients.dpo_beta, run.options.dpo_logprobs == "mean")


def val_grads(run: Run, sd: StageDir) -> dict:
    import time

    import torch
    from tqdm.auto import tqdm

    from ..grads.losses import RecordedLoss
    from ..grads.sinks import ProjectedFeatures
    from ..numerics import check_validation_features
    from ..store import save_array

    ckpts, pairs = run.checkpoints(), run.validation.records
    targets = validation_targets(run)
    info = {"ids": [p.id for p in pairs], "subtasks": [p.subtask for p in pairs], "checkpoints": [c.path.name for c in ckpts],
            "targets": [t.name for t in targets]}
    with_weights = target_kind(run.selector, run.options) != "sft"
    projected = run.config.gradients.projection != "none"  # else exact scoring takes full gradients in train-grads
    if not projected and not with_weights:
        return info
    features = projector(run) if projected else None
    seconds = {}  # wall time per checkpoint: the first also carries compilation and kernel tuning
    for ckpt in tqdm(ckpts, desc="validation gradients", unit="ckpt", disable=not run.dist.is_main):
        started = time.perf_counter()
        run.model.load_adapter(ckpt.adapter)
        folder = sd.path / ckpt.path.name
        if projected:
            sink = ProjectedFeatures(features, preconditioner(run, ckpt))
            recorded = [RecordedLoss(t.loss, len(t.items)) for t in targets]  # the pairs' log-probs, for their weights
            for target, loss in zip(targets, recorded):
                grads = target_grads(run, replace(target, loss=loss), sink)
                check_validation_features(grads.numpy(), info["ids"], "val-grads", ckpt.path.name)
                if run.dist.is_main:  # a sharded model's processes all compute them (`Stage.on_every_process`)
                    save_array(folder / f"{target.name}.npy", grads.float().numpy())
        if with_weights:  # (chosen, rejected) from the pairs' pass or the two sides' passes
            logps, counts = ((torch.cat([r.logps for r in recorded], 1), torch.cat([r.counts for r in recorded], 1)) if projected
                             else policy_logprobs(run))
            weights = dpo_weights(run, logps, counts)
            if run.dist.is_main:
                save_array(folder / DPO_WEIGHTS, weights.double().numpy())
        seconds[ckpt.path.name] = time.perf_counter() - started
    sequences = [s for t in targets for item in t.items for s in (item if isinstance(item, tuple) else (item,))]
    return {**info, "checkpoint_seconds": seconds, **work(len(pairs), sequences, len(ckpts))}


def _key(k) -> list:
    from ..grads.project import MAP_VERSION

    options = k.options
    kind = target_kind(k.selector, options)
    dpo = [k.config.gradients.dpo_beta, options.dpo_logprobs] if kind != "sft" else None
    adam = options.precondition == "adam" or None
    return [k.stage("warmup"), k.projection(MAP_VERSION), kind, dpo, adam, k.validation]


register_stage(Stage(
    "val-grads", "grads/val", "Per-pair validation gradients (DPO for ROSE, SFT of the chosen response for LESS) at each checkpoint, projected.",
    val_grads, key=_key, after=("warmup", "base-logprobs"), reads=frozenset({"validation"}), gradients=True))
