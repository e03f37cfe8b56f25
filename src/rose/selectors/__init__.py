"""Selection methods: one `Selector` record each, registered by name.

Adding a selector is one file that defines its scoring function and one `register_selector(...)`
line (see `tests/toy_selector.py`); the pipeline asks the record, never the name, what a method
needs: gradient stages and which validation loss they take, the validation set, the model. An
unknown name is an error that lists the registered ones. Importing this package imports no torch:
scoring functions load what they need when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from ..context import Run

VALIDATION_LOSSES = ("dpo", "sft")


@dataclass(frozen=True)
class Scores:
    """A selector's output: scores [N] (higher is selected first), per-subtask scores [N, S] with
    the subtask names, anything worth keeping in scores.json, and the pool indices it dropped for
    broken inputs (`numerics.pool_rows_to_drop`), whose score is -inf: never selected."""

    scores: np.ndarray
    per_subtask: np.ndarray
    subtasks: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Selector:
    name: str
    help: str
    score: Callable[[Run], Scores]
    validation_loss: str | None = None  # "dpo" or "sft": the gradient stages run, with validation gradients of this loss
    reads_validation: bool = False  # the scores depend on the validation set
    needs_model: bool = False  # scoring runs the base model
    seeded: bool = False  # select.seed changes the scores
    selects_all: bool = False  # the whole pool, whatever select.fraction says

    def __post_init__(self) -> None:
        if self.validation_loss not in (None, *VALIDATION_LOSSES):
            raise ValueError(f"{self.name}: validation_loss must be one of {VALIDATION_LOSSES} or None")

    @property
    def uses_gradients(self) -> bool:
        return self.validation_loss is not None


SELECTORS: dict[str, Selector] = {}


def register_selector(selector: Selector) -> Selector:
    """Make a selector available as `select.method: <name>` (and in `compare.methods`)."""
    if selector.name in SELECTORS and SELECTORS[selector.name] is not selector:
        raise ValueError(f"a selector named {selector.name!r} is already registered")
    SELECTORS[selector.name] = selector
    return selector


def get_selector(name: str) -> Selector:
    if name not in SELECTORS:
        raise ConfigError(f"unknown selection method {name!r}; registered: {', '.join(SELECTORS)}")
    return SELECTORS[name]


from . import gradient, baselines, embedding  # noqa: E402, F401, I001  (the built-in selectors register themselves, in this order)

__all__ = ["SELECTORS", "Scores", "Selector", "get_selector", "register_selector"]
