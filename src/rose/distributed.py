"""One process or many (torchrun): rank, world size, device, and the few collectives rose needs.

Nothing here runs at import. `Dist.from_env()` joins the process group that torchrun describes in
the environment (gloo on CPU, NCCL on GPU); a plain `python -m rose` is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
        """DDP-wrap for training when there are several processes."""
        if self.world == 1:
            return model
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
