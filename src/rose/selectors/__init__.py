"""Selection methods: one `Selector` record each, registered by name.

Adding a selector is one file that defines its scoring function and one `register_selector(...)`
line (see `tests/toy_selector.py`); the pipeline asks the record, never the name, what a method
needs: gradient stages and which validation loss they take, the validation set, the model. An
unknown name is an error that lists the registered ones. Importing this package imports no torch:
scoring functions load what they need when they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from ..context import Run

VALIDATION_LOSSES = ("dpo", "sft")


@dataclass(frozen=True)
class SelectionOptions:
    """How a method turns similarities into a selection: the design choices of ROSE that the
    selection study varies (`select.*` in the config; docs/results.md). The defaults are the
    paper's. Each selector declares which options it takes and its own defaults for them."""

    balance: str = "none"  # none: the top scores overall; subtasks / pairs: round-robin over those
    over_shots: str = "mean"  # the validation pairs of a subtask: mean or max of their similarities
    over_subtasks: str = "max"  # the subtasks: max or mean of their scores
    checkpoint_weights: str = "lr"  # lr (each checkpoint's mean lr), lr_dpo (x each pair's DPO sigmoid weight), last
    sides: str = "pair"  # pair: the pair's DPO gradient; apart: cos with the chosen side minus cos with the rejected; chosen
    dpo_logprobs: str = "sum"  # the DPO margin from summed (paper) or per-token mean response log-probs
    precondition: str = "none"  # of the validation gradients: none, adam (1/sqrt(v + eps)) or gist (top singular subspace)
    gist_rank: int = 50  # dimensions of GIST's subspace (at most the number of validation pairs)

    def changed(self, other: SelectionOptions) -> dict[str, Any]:
        """The options whose value differs from `other`'s."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)}


OPTION_NAMES = tuple(f.name for f in fields(SelectionOptions))
SIMILARITY_OPTIONS = ("balance", "over_shots", "over_subtasks")  # for any method with per-pair similarities
GRADIENT_OPTIONS = (*SIMILARITY_OPTIONS, "checkpoint_weights", "precondition", "gist_rank")
DPO_OPTIONS = (*GRADIENT_OPTIONS, "sides", "dpo_logprobs")


@dataclass(frozen=True)
class Scores:
    """A selector's output: scores [N] (higher is selected first), per-subtask scores [N, S] with
    the subtask names, per-pair similarities [N, M] where the method has them (for round-robin
    over pairs), anything worth keeping in scores.json, and the pool indices it dropped for
    broken inputs (`numerics.pool_rows_to_drop`), whose score is -inf: never selected."""

    scores: np.ndarray
    per_subtask: np.ndarray
    subtasks: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    per_pair: np.ndarray | None = None
    dropped: list[int] = field(default_factory=list)


def similarity_scores(run: Run, sims: np.ndarray, info: dict[str, Any] | None = None) -> Scores:
    """A method's scores from its [N, M] similarities with the validation pairs, aggregated over
    each subtask's pairs and then over subtasks as the method's options say."""
    from ..influence import aggregate

    subtasks = [p.subtask for p in run.validation.records]
    scores, per_subtask = aggregate(sims, subtasks, run.options.over_shots, run.options.over_subtasks)
    return Scores(scores, per_subtask, list(dict.fromkeys(subtasks)), info or {}, per_pair=sims)


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
    options: tuple[str, ...] = ()  # the `SelectionOptions` a user may set for it
    defaults: SelectionOptions = SelectionOptions()  # its value of every option the user leaves unset

    def __post_init__(self) -> None:
        if self.validation_loss not in (None, *VALIDATION_LOSSES):
            raise ValueError(f"{self.name}: validation_loss must be one of {VALIDATION_LOSSES} or None")
        if unknown := set(self.options) - set(OPTION_NAMES):
            raise ValueError(f"{self.name}: unknown options {sorted(unknown)}")

    def resolve(self, given: dict[str, Any]) -> SelectionOptions:
        """Its options: the ones given (config values that are not null), its defaults for the rest.
        An option it does not take is an error that says which methods take it."""
        given = {k: v for k, v in given.items() if v is not None}
        for name in given:
            if name not in self.options:
                takers = [s.name for s in SELECTORS.values() if name in s.options]
                fixed = " (it takes no options)" if not self.options else ""
                raise ConfigError(f"select.{name} does not apply to method {self.name!r}{fixed}; "
                                  f"methods that take it: {', '.join(takers) or 'none'}")
        options = replace(self.defaults, **given)
        if options.checkpoint_weights == "lr_dpo" and (self.validation_loss != "dpo" or options.sides == "chosen"):
            raise ConfigError(f"select.checkpoint_weights=lr_dpo needs DPO validation gradients; {self.name!r} "
                              f"{'with sides=chosen ' if self.validation_loss == 'dpo' else ''}has none")
        if options.precondition == "gist" and options.sides == "apart":
            raise ConfigError("select.precondition=gist and select.sides=apart do not combine: the difference of the two "
                              "cosines has no single validation vector to project")
        return options

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


from . import gradient, baselines, embedding, hybrid  # noqa: E402, F401, I001  (the built-in selectors register themselves, in this order)

__all__ = ["SELECTORS", "Scores", "SelectionOptions", "Selector", "get_selector", "register_selector", "similarity_scores"]
