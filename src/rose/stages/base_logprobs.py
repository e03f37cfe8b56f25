"""base-logprobs: the base model's (adapters off) summed response log-probs of the validation pairs,
held-out pairs and golden test answers, computed once: DPO's reference in the gradient stages and
the base of every evaluation metric."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Stage, register_stage, work

if TYPE_CHECKING:
    import numpy as np

    from ..context import Run
    from ..store import StageDir

SETS = ("validation", "heldout", "tests")  # pairs [P, 2] (chosen, rejected), pairs, answers [T]


def response_logprobs_of(run: Run, sets: tuple[str, ...] = SETS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{set: (summed response log-probs, response token counts)} of the model as it is now, for the
    named sets that have items: pairs as [P, 2] (chosen, rejected), test answers as [T]."""
    from ..grads.engine import sequence_logprobs

    out = {}
    for name in sets:
        items = getattr(run, name).encoded
        if not items:
            continue
        pairs = name != "tests"
        seqs = [s for pair in items for s in pair] if pairs else items
        logps, counts = sequence_logprobs(run.model.model, seqs, run.config.gradients.batch_tokens, run.device)
        shape = (-1, 2) if pairs else (-1,)
        out[name] = (logps.view(*shape).double().numpy(), counts.view(*shape).numpy())
    return out


def sequences_of(run: Run, sets) -> list:
    """Every sequence of the named sets: both responses of each pair, each test answer."""
    return [s for name in sets for item in getattr(run, name).encoded for s in (item if name != "tests" else (item,))]


def base_logprobs(run: Run, sd: StageDir) -> dict:
    from ..store import save_array

    with run.model.model.disable_adapter():
        computed = response_logprobs_of(run)
    if run.dist.is_main:  # a sharded model's processes all compute them (`Stage.on_every_process`)
        for name, (logps, counts) in computed.items():
            save_array(sd.path / f"{name}_logps.npy", logps)
            save_array(sd.path / f"{name}_counts.npy", counts)
    return {"sets": list(computed), **work(sum(len(getattr(run, name).encoded) for name in computed), sequences_of(run, computed))}


def read_base_logprobs(run: Run, name: str) -> np.ndarray:
    """A set's base-model log-probs from the finished stage ([P, 2] for pairs, [T] for tests)."""
    import numpy as np

    return np.load(run.require("base-logprobs").path / f"{name}_logps.npy")


register_stage(Stage(
    "base-logprobs", "base_logprobs", "Base-model log-probs of the validation, held-out and test sets (DPO's reference, the evaluation's base).",
    base_logprobs, key=lambda k: [k.validation, k.evaluation], reads=frozenset({"validation", "heldout", "tests"})))
