"""LoRA training for the warm-up and the final fine-tune: AdamW, linear schedule, per-epoch checkpoints.

Each checkpoint holds what the gradient stages need and what resuming needs: the adapter (PEFT
format), the AdamW moments keyed by parameter name (never by position, the KeyError of LESS #4),
and the learning rate of every step of that epoch. A `resume` folder of the same form is kept
every `resume_every` steps inside an epoch, so a long epoch (a full-pool fine-tune) survives being
stopped. Every step draws its dropout masks from a seed of its own, so a resumed run ends with the
weights an uninterrupted one would have. Under torchrun the model is wrapped in DDP and each
process takes its share of every batch. A model sharded over the processes (model.shard=fsdp)
exchanges gradients through FSDP2 instead, and every process makes the same number of passes per
step; its checkpoints are gathered whole and written as an unsharded model's are.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from peft.helpers import disable_input_dtype_casting
from tqdm.auto import tqdm

from .config import TrainConfig
from .distributed import Dist, is_sharded, part_like, whole
from .encoding import Encoded, collate, pack, token_batches, token_packs
from .grads.adam import AdamMoments
from .grads.losses import ResponseLogprobs, sft_losses
from .models import lora_parameters
from .numerics import check_losses, check_weights
from .store import atomic_path, load_tensors, read_json, save_tensors, write_json


@dataclass(frozen=True)
class Checkpoint:
    """A saved epoch: adapter folder, optimizer moments, and that epoch's learning rates."""

    path: Path

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    def state(self) -> dict:
        return read_json(self.path / "state.json")

    def mean_lr(self) -> float:
        lrs = self.state()["lrs"]
        return sum(lrs) / len(lrs)

    def moments(self, names: Sequence[str]) -> AdamMoments:
        """AdamW moments flattened in the order of `names` (zeros for a parameter never stepped)."""
        tensors = load_tensors(self.path / "optimizer.safetensors")
        state = self.state()
        missing = [n for n in names if f"exp_avg.{n}" not in tensors]
        if missing:
            raise ValueError(f"{self.path}: optimizer state lacks {len(missing)} parameters, e.g. {missing[0]}")
        m = torch.cat([tensors[f"exp_avg.{n}"].flatten() for n in names])
        v = torch.cat([tensors[f"exp_avg_sq.{n}"].flatten() for n in names])
        beta1, beta2 = state["adam_betas"]
        return AdamMoments(m.float(), v.float(), beta1, beta2, state["adam_eps"])


def lr_at(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Linear warm-up to `peak` over ceil(warmup_ratio * total) steps, then linear decay to 0."""
    warm = math.ceil(warmup_ratio * total)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


def train_lora(
    model: PeftModel,
    examples: Sequence[Encoded],
    cfg: TrainConfig,
    out_dir: Path,
    pad_id: int,
    seed: int,
    dist_ctx: Dist,
    save_checkpoints: bool,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[int, list[float], list[float]], None] | None = None,
    stage: str = "warmup",
) -> list[Checkpoint]:
    """Train the LoRA weights of `model` on `examples`; resume from the last complete epoch in out_dir.

    The loss of a step is the mean over its examples of each example's mean response-token NLL,
    the same loss whose per-example gradients the train-gradient stage takes. `on_epoch(first
    global step, losses, lrs)` receives each finished epoch's steps on the main process (trackers).
    A non-finite loss or weight raises NumericalError (`numerics.py`, naming `stage`, the config
    section whose lr it was) before anything is saved: the losses are read, and checked, every 25
    steps, at every resume point and at the end of each epoch, so a run stops within 25 steps of
    diverging without making every step wait for the GPU.
    """
    params = lora_parameters(model)
    device = next(iter(params.values())).device
    optimizer = torch.optim.AdamW(
        params.values(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    checkpoints = [Checkpoint(out_dir / f"epoch-{e}") for e in range(1, cfg.epochs + 1)]
    resume_point = Checkpoint(out_dir / "resume")
    done = 0
    while done < cfg.epochs and (checkpoints[done].path / "state.json").is_file():
        done += 1
    first_step, lrs, step_losses = 0, [], []
    # a resume point is newer than the last epoch checkpoint unless it is left from an earlier epoch
    # (epoch checkpoints other than the last are not kept when save_checkpoints is off)
    resume = resume_point.state() if (resume_point.path / "state.json").is_file() else None
    if done < cfg.epochs and resume is not None and resume["epoch"] >= done:
        _restore(model, optimizer, resume_point, params)
        done, lrs, first_step = resume["epoch"], resume["lrs"], len(resume["lrs"])
        step_losses = [torch.tensor(x / dist_ctx.world, device=device) for x in resume["losses"]]
        log(f"resuming epoch {done + 1} after step {first_step} from {resume_point.path}")
    elif done:
        _restore(model, optimizer, checkpoints[done - 1], params)
        log(f"resuming after epoch {done} from {checkpoints[done - 1].path}")
    trainer = dist_ctx.wrap(ResponseLogprobs(model))
    sharded, packed = is_sharded(model), device.type == "cuda"
    # Under a 16-bit base model the forward runs in that dtype over the float32 LoRA weights: autocast
    # casts each weight once per forward, and peft's own cast of every adapter input to float32 (a
    # copy of each activation, then float32 products) is switched off. Weights, gradients and AdamW
    # moments stay float32.
    base_dtype = model.get_base_model().dtype
    autocast_dtype = base_dtype if base_dtype.itemsize < 4 else None
    where = {"stage": stage, "lr": cfg.lr, "dtype": str(base_dtype).removeprefix("torch.")}

    def read_losses(epoch: int) -> list[float]:
        """The epoch's step losses so far, summed over processes (a collective), checked."""
        losses = dist_ctx.sum(torch.stack(step_losses)).tolist()
        check_losses(losses, epoch=epoch + 1, steps_per_epoch=steps_per_epoch, **where)
        return losses

    def checked_state(epoch: int, step: int) -> tuple[dict, dict]:
        state = _whole_state(optimizer, params)
        check_weights(state[0], epoch=epoch + 1, step=step, **where)
        return state

    bar = tqdm(total=total, initial=done * steps_per_epoch + first_step, desc="train", unit="step", disable=not dist_ctx.is_main)
    with disable_input_dtype_casting(model, active=autocast_dtype is not None), bar:  # the bar ends its line, also on an error
        model.train()
        for epoch in range(done, cfg.epochs):
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
            for step in range(first_step, steps_per_epoch):
                global_step = epoch * steps_per_epoch + step
                torch.manual_seed(_step_seed(seed, global_step, dist_ctx.rank))  # this step's dropout masks
                lr = lr_at(global_step, total, cfg.lr, cfg.warmup_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                shares = [[examples[i] for i in batch[r :: dist_ctx.world]] for r in range(dist_ctx.world)]
                # a sharded model's passes are collectives: every process makes as many as the busiest one
                passes = max(len(micro_batches(rows, cfg.micro_batch_tokens, packed)) for rows in shares) if sharded else 1
                loss_sum = _accumulate(trainer, shares[dist_ctx.rank], examples[batch[0]], cfg.micro_batch_tokens,
                                       len(batch) / dist_ctx.world, pad_id, device, autocast_dtype, packed, passes)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                lrs.append(lr)
                step_losses.append(loss_sum / len(batch))
                bar.update(1)
                if step % 25 == 0:  # reading the loss waits for the GPU, so only now and then
                    bar.set_postfix(epoch=epoch + 1, loss=f"{read_losses(epoch)[-1]:.3f}")
                if cfg.resume_every and (step + 1) % cfg.resume_every == 0 and step + 1 < steps_per_epoch:
                    losses = read_losses(epoch)
                    state = checked_state(epoch, global_step + 1)
                    if dist_ctx.is_main:
                        _save(model, state, resume_point, cfg, epoch, global_step + 1, lrs, losses)
                    dist_ctx.barrier()
            losses = read_losses(epoch)
            keep = save_checkpoints or epoch == cfg.epochs - 1
            state = checked_state(epoch, global_step + 1) if keep else None
            if dist_ctx.is_main:
                if keep:
                    _save(model, state, checkpoints[epoch], cfg, epoch + 1, global_step + 1, lrs, losses)
                if on_epoch is not None:
                    on_epoch(epoch * steps_per_epoch, losses, lrs)
                shutil.rmtree(resume_point.path, ignore_errors=True)
            dist_ctx.barrier()
            first_step, lrs, step_losses = 0, [], []
    model.eval()
    return checkpoints if save_checkpoints else checkpoints[-1:]


def _step_seed(seed: int, global_step: int, rank: int) -> int:
    return (seed * 1_000_003 + global_step) * 1_009 + rank


def _accumulate(trainer: torch.nn.Module, rows: Sequence[Encoded], filler: Encoded, micro_tokens: int, scale: float,
                pad_id: int, device: torch.device, autocast_dtype: torch.dtype | None, packed: bool,
                passes: int = 1) -> torch.Tensor:
    """Backward over micro-batches, at least `passes` of them; returns this process's summed loss (for
    logging; a device tensor, so that no step waits for the GPU).

    Each process divides by its share of the batch (`scale`); DDP (or FSDP2) then averages over
    processes, so the gradient is the mean over the whole batch. A process with no rows in a short
    last batch still joins the all-reduce, and one with fewer micro-batches than `passes` makes up
    the difference, through `filler` with its loss multiplied by zero.
    """
    total = torch.zeros((), device=device)
    chunks = micro_batches(rows, micro_tokens, packed) or [[]]
    chunks += [[]] * (passes - len(chunks))
    for k, chunk in enumerate(chunks):
        sync = k == len(chunks) - 1
        with (trainer.no_sync() if hasattr(trainer, "no_sync") and not sync else nullcontext()):
            layout = pack(chunk or [filler]) if packed else collate(chunk or [filler], pad_id)
            batch = {key: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for key, v in layout.items()}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                losses = sft_losses(*trainer(batch)) * (1.0 if chunk else 0.0)
            (losses.sum() / scale).backward()
            total += losses.detach().sum()
    return total


def micro_batches(rows: Sequence[Encoded], micro_tokens: int, packed: bool) -> list[list[Encoded]]:
    """A step's examples in micro-batches of at most `micro_tokens` tokens: packed rows on a GPU,
    where varlen attention does no work on padding (the engine's layout), padded batches of similar
    lengths elsewhere, where attending to each packed sequence in turn costs more than the padding.
    The loss is the same either way (`tests/test_train.py`)."""
    lengths = [len(r) for r in rows]
    groups = token_packs(lengths, micro_tokens) if packed else token_batches(lengths, micro_tokens)
    return [[rows[i] for i in idx] for idx in groups]


def _whole_state(optimizer: torch.optim.Optimizer, params: dict) -> tuple[dict, dict]:
    """(LoRA weights, AdamW moments) by parameter name, whole. Those of a sharded model are gathered
    from every process (a collective per tensor), so every process calls this; the main one saves."""
    weights, moments = {}, {}
    for name, p in params.items():
        state = optimizer.state.get(p, {})
        weights[name] = whole(p.detach())
        moments[f"exp_avg.{name}"] = whole(state.get("exp_avg", torch.zeros_like(p)))
        moments[f"exp_avg_sq.{name}"] = whole(state.get("exp_avg_sq", torch.zeros_like(p)))
        moments[f"step.{name}"] = torch.as_tensor(float(state.get("step", 0)))
    return weights, moments


def _save(model: PeftModel, state: tuple[dict, dict], ckpt: Checkpoint, cfg: TrainConfig,
          epoch: int, step: int, lrs: list[float], losses: list[float]) -> None:
    weights, moments = state
    with atomic_path(ckpt.path) as tmp:
        # the vocabulary is never resized, so no embedding weights to save; "auto" would ask the hub
        # about a base named by hub id at every checkpoint
        model.save_pretrained(tmp / "adapter", state_dict=weights, save_embedding_layers=False)
        save_tensors(tmp / "optimizer.safetensors", moments)
        write_json(tmp / "state.json", {
            "epoch": epoch, "global_step": step, "lrs": lrs, "losses": losses,
            "adam_betas": list(cfg.adam_betas), "adam_eps": cfg.adam_eps, "weight_decay": cfg.weight_decay,
        })


def _restore(model: PeftModel, optimizer: torch.optim.Optimizer, ckpt: Checkpoint, params: dict) -> None:
    from .models import load_adapter_weights

    load_adapter_weights(model, ckpt.adapter)
    tensors = load_tensors(ckpt.path / "optimizer.safetensors")
    for name, p in params.items():
        optimizer.state[p] = {
            "step": tensors[f"step.{name}"].clone(),
            "exp_avg": part_like(tensors[f"exp_avg.{name}"].to(p.device, p.dtype), p),
            "exp_avg_sq": part_like(tensors[f"exp_avg_sq.{name}"].to(p.device, p.dtype), p),
        }

