"""The pipeline's stages, one `Stage` record each, registered in pipeline order.

A stage reads files from the run directory, writes its own folder and is skipped when its
manifest is complete for the same key. Everything that lists stages derives it from `STAGES`:
the CLI's subcommands and help, the pipeline's order and its checks before anything runs, the
stage keys (`keys.py`), `rose compare`'s shared folders and the tests. Adding a stage is one file
that defines its function and one `register_stage(...)` line, plus its import below.

Stage modules import torch and the model stack inside their functions: the CLI imports this
package to list the stages and check a run's inputs before any of that loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..context import Run
    from ..encoding import Encoded
    from ..keys import KeyParts
    from ..selectors import Selector
    from ..store import StageDir

INPUTS = ("pool", "validation", "heldout", "tests")


@dataclass(frozen=True)
class Stage:
    name: str  # the CLI subcommand
    folder: str  # under run_dir
    help: str
    run: Callable[[Run, StageDir], dict]  # writes the folder; returns what goes into the manifest
    key: Callable[[KeyParts], Any]  # what its results depend on (config parts, input digests, upstream keys)
    after: tuple[str, ...] = ()  # stages that must be complete before it starts
    reads: frozenset[str] = frozenset()  # inputs, of INPUTS
    for_selector: bool = False  # also reads and loads what the selection method needs (the score stage)
    gradients: bool = False  # runs only for selection methods that use gradients
    loads_model: bool = True
    all_processes: bool = False  # under torchrun every process runs it (sharded or data-parallel work)

    def on_every_process(self, run: Run) -> bool:
        """Whether every process runs the body (otherwise the main process does, the others wait):
        for sharded or data-parallel work, and, when the model is sharded over the processes
        (model.shard=fsdp), for every stage that runs it, each of whose passes is a collective."""
        return self.all_processes or (run.sharded and self.loads_model_for(run.selector))

    def reads_for(self, selector: Selector) -> set[str]:
        extra = {"validation"} if self.for_selector and selector.reads_validation else set()
        return set(self.reads) | extra

    def loads_model_for(self, selector: Selector) -> bool:
        return self.loads_model or (self.for_selector and selector.needs_model)


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add a stage at the end of the pipeline (registration order is pipeline order)."""
    if stage.name in STAGES:
        raise ValueError(f"a stage named {stage.name!r} is already registered")
    unknown = [s for s in stage.after if s not in STAGES]
    if unknown or not set(stage.reads) <= set(INPUTS):
        raise ValueError(f"stage {stage.name!r}: unknown upstream stages {unknown} or inputs {sorted(stage.reads)}")
    STAGES[stage.name] = stage
    return stage


def stages_for(selector: Selector) -> list[str]:
    """The stages a selection method runs, in order: all of them for gradient methods; the others skip the gradient stages."""
    return [name for name, stage in STAGES.items() if selector.uses_gradients or not stage.gradients]


def inputs_read_by(names: list[str], selector: Selector) -> list[str]:
    """The inputs these stages read with this selection method, in reading order."""
    reads = set().union(*(STAGES[name].reads_for(selector) for name in names))
    return [name for name in INPUTS if name in reads]


def work(examples: int, sequences: Iterable[Encoded], times: int = 1) -> dict:
    """What a stage processed, for its manifest's throughput figures: examples, tokens, and the
    positions where logits are formed (response tokens), `times` over (epochs, checkpoints)."""
    seqs = list(sequences)
    return {"work": {"examples": examples * times, "tokens": times * sum(len(s) for s in seqs),
                     "logit_positions": times * sum(len(s) - s.n_prompt for s in seqs)}}


def execute(stage: Stage, run: Run) -> None:
    """Run one stage unless it is done: upstream checks, the folder claimed, the body on the main
    process (or on every process, `Stage.on_every_process`), the manifest written last with wall time and peak GPU memory."""
    sd = run.stage_dir(stage.name)
    if sd.is_done():
        return
    main = run.dist.is_main
    if main:
        for upstream in stage.after:
            run.require(upstream)
        sd.begin()
    run.dist.barrier()
    meter = _Meter(run.device)
    info = stage.run(run, sd) if main or stage.on_every_process(run) else {}
    run.dist.barrier()
    if main:
        sd.finish(**meter.read(), **info)
    run.dist.barrier()


class _Meter:
    """Wall time and, on a GPU, peak memory of one stage."""

    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(device)
        self.device, self.started = device, time.perf_counter()

    def read(self) -> dict:
        out = {"seconds": time.perf_counter() - self.started}
        if self.cuda:
            import torch

            out["peak_gpu_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


# the built-in stages, in pipeline order
from . import warmup, base_logprobs, val_grads, train_grads, score, select, finetune, evaluate  # noqa: E402, F401, I001

__all__ = ["STAGES", "Stage", "execute", "inputs_read_by", "register_stage", "stages_for", "work"]
