"""LESS's per-example gradient collection, step for step: the baseline of `grad_throughput.py`.

What LESS does, and where it says so (princeton-nlp/LESS at commit 1e4afda,
`less/data_selection/collect_grad_reps.py`: `collect_grads`, `obtain_gradients_with_adam`;
`less/data_selection/get_validation_dataset.py`: `get_dataloader`, batch_size=1):
- one example per forward and backward pass, through the model's own forward with labels
  (`model(**batch).loss`: logits at every position, the mean NLL over the response tokens);
- the LoRA gradient flattened into one [D] vector and turned into Adam's direction
  m' / sqrt(v' + eps) with the checkpoint's moments (no bias correction), then `model.zero_grad()`;
- the directions buffered and, every `project_interval = 16` examples, stacked into a [16, D]
  block, cast to float16 and projected in one call of TRAK's CudaProjector (MadryLab/trak,
  `trak/projectors.py`, `CudaProjector.project`: one `fast_jl.project_rademacher_16` kernel, a
  dense Rademacher matrix hashed on the fly, for a batch of up to 16 rows); the projected rows
  go to the CPU.
rose's `DenseProjector` can play TRAK's part (on a GPU it is the same kind of fused kernel, the
matrix hashed in registers, `grads/rademacher_triton.py`, one launch per LoRA matrix), or TRAK's
own `CudaProjector` does where its `fast_jl` extension is built (`trak_projector`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import torch

from rose.encoding import Encoded, collate
from rose.grads.adam import AdamMoments, adam_direction
from rose.grads.oracle import flat_grad
from rose.grads.project import Projector

PROJECT_INTERVAL = 16  # LESS's project_interval: examples per projection call


def less_features(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    examples: Sequence[Encoded],
    pad_id: int,
    moments: AdamMoments,
    projector: Projector | Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor | None:
    """[N, d] projected Adam directions of `examples`, on the CPU, computed as LESS computes them.

    projector=None leaves the projection out (and with it the buffer): the loop as it would run
    if the projection were free. Returns None then.
    """
    device = params[0].device
    buffer: list[torch.Tensor] = []
    projected: list[torch.Tensor] = []
    for ex in examples:
        batch = {k: v.to(device) for k, v in collate([ex], pad_id).items()}
        model(**batch).loss.backward()
        direction = adam_direction(flat_grad(params)[None], moments)[0]
        model.zero_grad()
        if projector is None:
            continue
        buffer.append(direction)
        if len(buffer) == PROJECT_INTERVAL:
            projected.append(projector(torch.stack(buffer).to(torch.float16)).cpu())
            buffer = []
    if projector is None:
        return None
    if buffer:  # LESS projects what is left at the end the same way
        projected.append(projector(torch.stack(buffer).to(torch.float16)).cpu())
    return torch.cat(projected)


def trak_projector(grad_dim: int, proj_dim: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """TRAK's CudaProjector set up as LESS sets it up (`collect_grad_reps.get_trak_projector` and
    `collect_grads`: Rademacher, seed 0, at most 16 rows a call, model_id 0), as a callable
    [B, D] float16 -> [B, d]; None off CUDA or where `traker` or its `fast_jl` kernel is missing."""
    if device.type != "cuda" or importlib.util.find_spec("fast_jl") is None or importlib.util.find_spec("trak") is None:
        return None
    from trak.projectors import CudaProjector, ProjectionType

    projector = CudaProjector(grad_dim=grad_dim, proj_dim=proj_dim, seed=0, proj_type=ProjectionType.rademacher,
                              device=device, max_batch_size=PROJECT_INTERVAL)
    return lambda x: projector.project(x, model_id=0)
