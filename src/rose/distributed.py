"""One process or many (torchrun): rank, world size, device, and the few collectives rose needs.

Nothing here runs at import. `Dist.from_env()` joins the process group that torchrun describes in
the environment (gloo on CPU, NCCL on GPU); a plain `python -m rose` is a world of one.

A model may also be sharded over the processes (model.shard=fsdp, `models.shard_model`): then its
weights, their gradients and AdamW moments are DTensors, each process holding a part. The helpers
at the end give the whole of such a tensor, put a whole one back as parts, take gradients through
FSDP2's backward and switch its gradient exchange off between micro-batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, spec: str) -> torch.device:
        """The device this process uses: with several processes, GPU `local_rank`."""
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        if spec == "cuda" and self.world > 1:
            return torch.device("cuda", self.local_rank)
        return torch.device(spec)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """For training when there are several processes: DDP, or for a sharded model `ShardedTrainer`."""
        if self.world == 1:
            return model
        if is_sharded(model):
            return ShardedTrainer(model)
        from torch.nn.parallel import DistributedDataParallel

        device = next(p for p in model.parameters() if p.requires_grad).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes (a copy; float64 on the CPU)."""
        t = values.detach().double()
        if self.world > 1:
            t = t.to(self._collective_device())
            dist.all_reduce(t)
        return t.cpu()

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def leave_process_group() -> None:
    """Under torchrun, leave the process group at exit (NCCL warns of leaked resources otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- sharded models (model.shard=fsdp)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP has sharded some of the model's weights over the processes."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def whole(t: torch.Tensor) -> torch.Tensor:
    """The whole of a tensor FSDP may have sharded (a weight, its gradient or AdamW moment); `t` itself
    when it is not sharded. Gathering is a collective: every process asks for the same tensors in the
    same order."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def part_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's part of the whole tensor `t`, laid out as the sharded `like` is; `t` itself when
    `like` is not sharded. Every process holds all of `t` (read from the same file), so each keeps its
    part without communicating."""
    if not isinstance(like, DTensor):
        return t
    return distribute_tensor(t.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def whole_gradients(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d params by plain autograd. Sharded parameters are not what the forward pass used (FSDP
    gathered copies of them), so their gradients come from FSDP2's own backward: reduce-scattered,
    i.e. averaged over processes, which is each one's gradient when all computed the same loss;
    then gathered whole and cleared."""
    if not any(isinstance(p, DTensor) for p in params):
        return list(torch.autograd.grad(loss, params))
    loss.backward()
    grads = [whole(p.grad) for p in params]
    for p in params:
        p.grad = None
    return grads


class ShardedTrainer(torch.nn.Module):
    """What DDP is to a whole model, for a sharded one: FSDP2 itself reduce-scatters the gradients in
    backward (averaged over processes, as DDP's all-reduce is), and `no_sync` keeps a micro-batch's
    gradients on this process until the step's last micro-batch, as DDP's does."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in self.module.modules() if isinstance(m, FSDPModule)]
        for m in sharded:
            m.set_requires_gradient_sync(False, recurse=False)
        try:
            yield
        finally:
            for m in sharded:
                m.set_requires_gradient_sync(True, recurse=False)
