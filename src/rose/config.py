"""Typed configuration: one dataclass per stage, composed into `RunConfig`.

Each field's `help` text is what `rose config --help` prints. Paths in a YAML file are relative to
that file. Command-line overrides are `section.key=value`, the value parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, InputError
from .hub import is_hub, parse_hub
from .trackers import check_available


def _f(default: Any, help: str, path: bool = False, check: Callable[[str, Any], None] | None = None) -> Any:
    """A config field: its default, the help `rose config --keys` prints, whether it holds paths
    (resolved against the config file's folder), and the check its value must pass."""
    metadata = {"help": help, "path": path, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------- value checks
# Each takes (key, value) and raises ConfigError naming the key; `build` adds the section prefix.


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def one_of(*options: Any) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value not in options:
            raise ConfigError(f"{name}: unknown value {_short(value)}; expected one of {', '.join(map(str, options))}")
    return check


def integer(low: int) -> Callable[[str, Any], None]:
    """An integer >= low."""
    def check(name: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise ConfigError(f"{name} must be {what}, got {_short(value)}")
    return check


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Callable[[str, Any], None]:
    """A finite number in the interval [low, high] (either end open if asked)."""
    def check(name: str, value: Any) -> None:
        ok = _is_number(value) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
            raise ConfigError(f"{name} must be a finite number in {left}{low:g}, {high:g}{right}, got {_short(value)}")
    return check


def optional(inner: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value is not None:
            inner(name, value)
    return check


def each(inner: Callable[[str, Any], None], nonempty: bool = False) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if nonempty and not value:
            raise ConfigError(f"{name} must not be empty")
        for i, item in enumerate(value):
            inner(f"{name}[{i}]", item)
    return check


def nonempty_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {_short(value)}")


_DEVICE = re.compile(r"auto|cpu|mps|meta|(cuda|xpu|npu|hpu)(:\d+)?")


def device_spec(name: str, value: Any) -> None:
    """A device torch knows, checked without importing torch (so a typo fails in well under a second)."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ConfigError(f"{name}: unknown device {_short(value)}; expected auto, cpu, cuda, cuda:N, mps, xpu or xpu:N")


def subtask_spec(name: str, value: Any) -> None:
    if isinstance(value, str) and value in ("file", "field", "none"):
        return
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return
    raise ConfigError(f"{name}: unknown value {_short(value)}; expected file, field, none or a positive number of blocks")


def source_spec(name: str, value: Any) -> None:
    """A path, or a hub dataset in rose's syntax (checked here, so a typo fails before anything loads)."""
    nonempty_text(name, value)
    if is_hub(value):
        try:
            parse_hub(value)
        except InputError as e:
            raise ConfigError(f"{name}: {e}") from None


def column_map(*names: str) -> Callable[[str, Any], None]:
    """A mapping from some of rose's column names to the source's column names."""
    def check(name: str, value: Any) -> None:
        for key, column in value.items():
            one_of(*names)(f"{name} key", key)
            nonempty_text(f"{name}[{key}]", column)
    return check


FRACTION = number(0, 1, low_open=True)
POSITIVE = integer(1)
NON_NEGATIVE = integer(0)


def _module_names(name: str, value: str | list[str]) -> None:
    if isinstance(value, str):
        nonempty_text(name, value)
    else:
        each(nonempty_text, nonempty=True)(name, value)


def _betas(name: str, value: list) -> None:
    if len(value) != 2:
        raise ConfigError(f"{name} must be two numbers [beta1, beta2], got {_short(value)}")
    each(number(0, 1, high_open=True))(name, value)


class Section:
    """A config section: each field's `check` runs when the section is built, so a bad value is
    reported before any data or model is touched."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                check(f.name, getattr(self, f.name))


# ----------------------------------------------------------------------------- sections


@dataclass
class ModelConfig(Section):
    name: str = _f("smollm2-135m-instruct", "Built-in name, hub id, local model folder or .gguf file.", check=nonempty_text)
    dtype: str = _f("auto", "Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16, float64.",
                    check=one_of("auto", "float32", "bfloat16", "float16", "float64"))
    device: str = _f("auto", "auto, cpu, cuda or cuda:N.", check=device_spec)
    max_length: int = _f(512, "Longest tokenised example; longer responses are cut, longer prompts are an error.", check=POSITIVE)
    overlong: str = _f("error", "What to do with an example whose prompt alone exceeds max_length: error or skip.",
                       check=one_of("error", "skip"))
    trust_remote_code: bool = _f(False, "Allow model repositories to run their own code (off unless you trust them).")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) for hub ids.", check=optional(nonempty_text))
    compile_blocks: bool = _f(True, "On a GPU, torch.compile the decoder's norms, MLPs and rotary embedding once the model is loaded, for every "
                                    "training, gradient and evaluation pass (faster; a one-off compile of tens of seconds; "
                                    "docs/benchmarks.md). Set false if compilation fails for your model or platform.")
    kwargs: dict[str, Any] = _f({}, "Extra keyword arguments for the model's from_pretrained, e.g. "
                                    "{attn_implementation: sdpa} or a quantization_config mapping.")
    shard: str = _f("none", "How several processes (torchrun) hold the model: none (each holds all of it; training is "
                            "data-parallel, DDP) or fsdp (FSDP2 shards every decoder layer over the processes, so a model "
                            "too large for one GPU runs; every stage that runs the model then runs on every process). "
                            "Results are the same either way.", check=one_of("none", "fsdp"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shard == "fsdp" and "quantization_config" in self.kwargs:
            raise ConfigError("shard: fsdp cannot shard quantized base weights (model.kwargs.quantization_config); "
                              "use one or the other")


@dataclass
class LoraConfig(Section):
    r: int = _f(128, "LoRA rank (paper: 128).", check=POSITIVE)
    alpha: float = _f(512, "LoRA alpha (paper: 512).", check=number(0, low_open=True))
    dropout: float = _f(0.1, "LoRA dropout during training (gradients are taken without dropout).", check=number(0, 1, high_open=True))
    target_modules: str | list[str] = _f("auto", "Module names that get adapters; auto: the attention projections of "
                                                 "the model's family (q/k/v/o, or its fused qkv and output projections).",
                                         check=_module_names)


@dataclass
class PreferenceSource(Section):
    paths: list[str] = _f([], "Preference sources: jsonl/json (gzipped or not), parquet, arrow, save_to_disk folders or "
                              "hf://OWNER/NAME[/CONFIG][@REVISION][:SPLIT]; globs allowed.", path=True, check=each(source_spec))
    format: str = _f("auto", "rose (paper's dict keyed by prompt), trl ({prompt, chosen, rejected}), hh (transcripts) or auto.",
                     check=one_of("auto", "rose", "trl", "hh"))
    pairs: str = _f("target", "ROSE format only: 'target' = one (sft_target, rejected_target) pair per prompt; 'all' = every pair.",
                    check=one_of("target", "all"))
    subtasks: str | int = _f("file", "Subtasks for the max-over-subtasks score: file, field, none, or N contiguous blocks.",
                             check=subtask_spec)
    subtask_names: list[str] = _f([], "Names of the N subtask blocks in file order (e.g. SHP's subreddits); default block00, "
                                      "block01, ...", check=each(nonempty_text))
    limit: int | None = _f(None, "Use at most this many pairs (seeded random sample), for quick runs.", check=optional(POSITIVE))
    columns: dict[str, str] = _f({}, "Column names of TRL/HH rows where they differ from rose's, e.g. "
                                     "{prompt: question, chosen: good, rejected: bad}; keys: prompt, chosen, rejected, subtask.",
                                 check=column_map("prompt", "chosen", "rejected", "subtask"))


@dataclass
class DataConfig(Section):
    pool: list[str] = _f([], "Training pool sources: jsonl/json (gzipped or not), parquet, arrow, save_to_disk folders or "
                             "hf://OWNER/NAME[/CONFIG][@REVISION][:SPLIT] (split default train); globs allowed. Rows: "
                             "{messages}, TRL {prompt, completion} (strings or messages) or {text} (see response_template).",
                         path=True, check=each(source_spec))
    columns: dict[str, str] = _f({}, "Pool column names where they differ from rose's, e.g. {prompt: instruction, "
                                     "completion: output}; keys: messages, prompt, completion, text, id, dataset.",
                                 check=column_map("messages", "prompt", "completion", "text", "id", "dataset"))
    response_template: str | None = _f(None, "For pool rows of plain text: the marker the response follows (e.g. "
                                             "'### Assistant:'); the text before its last occurrence is the prompt "
                                             "(one user message, or Human/Assistant turns), the text after it the response.",
                                       check=optional(nonempty_text))
    pool_limit: int | None = _f(None, "Use a seeded random subset of this many pool examples (quick runs).", check=optional(POSITIVE))
    validation: PreferenceSource = field(default_factory=PreferenceSource, metadata={"help": "Few-shot preference set of the target task."})
    heldout: PreferenceSource = field(default_factory=lambda: PreferenceSource(pairs="all"), metadata={"help": "Held-out preference pairs for evaluation."})
    heldout_exclude_validation: bool = _f(True, "Drop held-out pairs whose prompt is a validation prompt.")
    heldout_exclude: list[str] = _f([], "Also drop held-out pairs whose prompt is in these preference files "
                                        "(e.g. every shot set of a few-shot sweep, so all share one held-out set).", path=True, check=each(source_spec))
    test: list[str] = _f([], "Test prompts with golden answers ({prompt, golden_answer}), from any source the pool "
                             "may be; globs allowed.", path=True, check=each(source_spec))
    test_limit: int | None = _f(None, "Use at most this many test prompts (seeded random sample).", check=optional(POSITIVE))
    empty_responses: str = _f("error", "A preference pair or test answer with an empty response: error, or skip it.",
                              check=one_of("error", "skip"))


@dataclass
class TrainConfig(Section):
    epochs: int = _f(4, "Passes over the training data.", check=POSITIVE)
    lr: float = _f(2e-5, "Peak learning rate (linear warm-up, then linear decay).", check=number(0, low_open=True))
    batch_size: int = _f(16, "Examples per optimizer step (across all processes).", check=POSITIVE)
    micro_batch_tokens: int = _f(4096, "Padded tokens per forward/backward pass per process (a step's examples are "
                                       "grouped by length into such micro-batches; gradients are accumulated).", check=POSITIVE)
    warmup_ratio: float = _f(0.03, "Share of steps spent warming up the learning rate.", check=number(0, 1, high_open=True))
    weight_decay: float = _f(0.0, "AdamW weight decay.", check=number(0))
    adam_betas: list[float] = _f([0.9, 0.999], "AdamW betas (also used for the Adam gradient direction).", check=_betas)
    adam_eps: float = _f(1e-8, "AdamW epsilon (also used for the Adam gradient direction).", check=number(0, low_open=True))
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).", check=number(0))
    resume_every: int = _f(100, "Optimizer steps between resume points inside an epoch (0: only epoch ends): a run "
                                "stopped mid-epoch restarts from the last one and ends with the same weights.", check=integer(0))


@dataclass
class WarmupConfig(TrainConfig):
    fraction: float = _f(0.05, "Share of the pool (random, seeded) used for warm-up training.", check=FRACTION)


@dataclass
class FinetuneConfig(TrainConfig):
    seed: int = _f(0, "Fine-tune seed (adapter initialisation and example order), added to the run seed: "
                      "compare.finetune_seeds fine-tunes one selection with several.", check=NON_NEGATIVE)


@dataclass
class GradientConfig(Section):
    projection: str = _f("sparse", "Random projection: sparse (balanced CountSketch), dense (Rademacher), or none "
                         "(exact cosines with the full validation gradients; stores [N, M] instead of [N, d]).",
                         check=one_of("sparse", "dense", "none"))
    dim: int = _f(32768, "Projected dimension (stored as float16). 32768 keeps influence scores within Spearman "
                         "0.97 of exact on SmolLM2/SHP; the paper's 8192 gave 0.92 (docs/benchmarks.md).", check=POSITIVE)
    seed: int = _f(0, "Projection seed; the same matrix in every process and run.", check=NON_NEGATIVE)
    batch_tokens: int = _f(4096, "Tokens in one gradient or evaluation pass (examples are packed into rows with no padding).",
                           check=POSITIVE)
    shard_size: int = _f(1024, "Examples per gradient shard file (the unit of resume).", check=POSITIVE)
    dpo_beta: float = _f(0.1, "DPO beta for the validation gradient.", check=number(0, low_open=True))


def known_method(name: str, value: Any) -> None:
    """A registered selection method (`rose.selectors`), looked up when the config is read."""
    from .selectors import SELECTORS

    if value not in SELECTORS:
        raise ConfigError(f"{name}: unknown selection method {_short(value)}; registered: {', '.join(SELECTORS)}")


@dataclass
class SelectConfig(Section):
    """The method and its options. An option left null takes the method's own default (the paper's
    choice for rose-paper, the study's for rose; `rose config --keys` lists them, docs/results.md
    gives the study); an option a method does not take is an error."""

    fraction: float = _f(0.05, "Share of the pool to select (top scores).", check=FRACTION)
    method: str = _f("rose", "A registered selection method: rose (DPO validation gradients; the paper's method with the mean over subtasks, "
                             "the selection study's choice), rose-paper (the paper's "
                             "method exactly, no options), less (SFT validation gradients of the chosen responses), random, "
                             "bm25 (against validation prompts + chosen), embedding (base model's mean hidden state, cosine), "
                             "rds+ (RDS+: position-weighted mean hidden state, round-robin over subtasks), hybrid (rank "
                             "average of rose-paper and rds+), or full (the whole pool).", check=known_method)
    seed: int = _f(0, "Seed of the random baseline.", check=NON_NEGATIVE)
    balance: str | None = _f(None, "How the budget is shared: none (the top scores overall), subtasks or pairs (round-robin: "
                                   "each subtask's, or validation pair's, next-best example not yet taken, in turn). Null: the method's own default.",
                             check=optional(one_of("none", "subtasks", "pairs")))
    over_shots: str | None = _f(None, "A subtask's score from its validation pairs' similarities: mean or max. Null: the method's own default.",
                                check=optional(one_of("mean", "max")))
    over_subtasks: str | None = _f(None, "An example's score from its subtask scores: max or mean. Null: the method's own default "
                                   "(mean for rose, max for the others).", check=optional(one_of("max", "mean")))
    checkpoint_weights: str | None = _f(None, "Gradient methods: each warm-up checkpoint's weight: lr (its mean learning rate, "
                                              "normalised), lr_dpo (times each pair's DPO sigmoid weight sigma(-beta margin) "
                                              "there: pairs the checkpoint already ranks right count less) or last (the "
                                              "last checkpoint alone). Null: the method's own default.", check=optional(one_of("lr", "lr_dpo", "last")))
    sides: str | None = _f(None, "rose: what a pair's target is: pair (its DPO gradient), apart (cosine with the chosen "
                                 "response's gradient minus cosine with the rejected one's) or chosen (the chosen one's: "
                                 "LESS's target). Null: the method's own default.", check=optional(one_of("pair", "apart", "chosen")))
    dpo_logprobs: str | None = _f(None, "rose: the DPO margin of the validation gradient from summed (paper) or per-token "
                                        "mean response log-probs. Null: the method's own default.", check=optional(one_of("sum", "mean")))
    precondition: str | None = _f(None, "Gradient methods: what is done to the validation gradients: none (paper), adam "
                                        "(divided by sqrt(v + eps), v the checkpoint's second moment) or gist (pool and "
                                        "validation features projected onto the validation features' top gist_rank "
                                        "singular directions before the cosine, as GIST does). Null: the method's own default.",
                                  check=optional(one_of("none", "adam", "gist")))
    gist_rank: int | None = _f(None, "precondition=gist: the subspace's dimension (capped at the number of validation pairs). Null: the method's own default.",
                               check=optional(POSITIVE))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.options  # noqa: B018 - an option the method does not take is reported here, with the config

    @property
    def options(self):
        """The method's options: those set here, its own defaults for the rest (`Selector.resolve`)."""
        from .selectors import OPTION_NAMES, get_selector

        return get_selector(self.method).resolve({name: getattr(self, name) for name in OPTION_NAMES})


@dataclass
class JudgeConfig(Section):
    enabled: bool = _f(False, "Also measure an LLM-judge win rate against the golden answers (needs an endpoint).")
    base_url: str | None = _f(None, "OpenAI-compatible endpoint; default: $ROSE_JUDGE_BASE_URL, else the OpenAI API.", check=optional(nonempty_text))
    model: str = _f("gpt-4o", "Judge model name at the endpoint.", check=nonempty_text)
    api_key_env: str = _f("OPENAI_API_KEY", "Environment variable holding the endpoint's API key.", check=nonempty_text)
    max_prompts: int = _f(100, "Test prompts to generate answers for and judge (seeded sample).", check=POSITIVE)
    max_new_tokens: int = _f(256, "Longest generated answer, in tokens.", check=POSITIVE)


@dataclass
class EvalConfig(Section):
    batch_size: int = _f(8, "Sequences per evaluation forward pass.", check=POSITIVE)
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "Optional LLM-judge win rate."})


@dataclass
class CompareConfig(Section):
    methods: list[str] = _f(["rose", "less", "random", "bm25", "embedding", "full"], "Methods of the main comparison, all at "
                            "select.fraction: registered methods or names of compare.ablations.", check=each(nonempty_text))
    random_seeds: list[int] = _f([0, 1, 2], "Selection seeds of the random baseline (mean and spread are reported).", check=each(NON_NEGATIVE))
    finetune_seeds: list[int] = _f([0], "Fine-tune seeds (finetune.seed) of every other method: several fine-tunes of its one "
                                        "selection, for mean ± std and paired intervals; random takes the first.",
                                   check=each(NON_NEGATIVE, nonempty=True))
    budgets: list[float] = _f([0.01, 0.05, 0.1, 0.2], "Data budgets (shares of the pool) for the budget sweep.", check=each(FRACTION))
    budget_methods: list[str] = _f(["rose", "less", "random"], "Methods of the budget sweep.", check=each(nonempty_text))
    shots: dict[str, list[str]] = _f({}, "Few-shot sweep: name -> validation files (e.g. {'1': [...], '10': [...]}).", path=True)
    shot_methods: list[str] = _f(["rose", "less"], "Methods of the few-shot sweep (at select.fraction).", check=each(nonempty_text))
    ablations: dict[str, dict[str, Any]] = _f({}, "Named variants of a method, usable in methods, budget_methods and "
                                                  "shot_methods: name -> select options, e.g. {rose-rr: {method: rose, "
                                                  "balance: subtasks}} (fraction and seed come from the comparison).")
    full_epochs: int = _f(1, "Fine-tuning epochs on the full pool (it is 1/fraction times larger than a selection).", check=POSITIVE)
    results_json: str | None = _f(None, "Where to write the per-method results JSON (default run_dir/compare/methods.json).", path=True, check=optional(nonempty_text))
    cache_dir: str | None = _f(None, "Shared stage folders (default run_dir/cache); point several tasks at one to share "
                                     "the warm-up and pool gradients.", path=True, check=optional(nonempty_text))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, options in self.ablations.items():
            ablation_select(name, options)
        for key in ("methods", "budget_methods", "shot_methods"):
            for i, name in enumerate(getattr(self, key)):
                if name not in self.ablations:
                    try:
                        known_method(f"{key}[{i}]", name)
                    except ConfigError as e:
                        raise ConfigError(f"{e}; or a name of compare.ablations") from None

    def select_for(self, name: str, base: SelectConfig) -> SelectConfig:
        """The select section of the comparison's method `name`: a registered method with those of
        the run's options that it takes, or an ablation's method with its own options (the others unset)."""
        from .selectors import OPTION_NAMES, get_selector

        if name in self.ablations:
            return dataclasses.replace(base, **{**dict.fromkeys(OPTION_NAMES), **self.ablations[name]})
        takes = get_selector(name).options
        return dataclasses.replace(base, method=name, **{option: None for option in OPTION_NAMES if option not in takes})


ABLATION_KEYS = {f.name for f in dataclasses.fields(SelectConfig)} - {"fraction", "seed"}


def ablation_select(name: str, options: dict[str, Any]) -> None:
    """Check one compare.ablations entry: a method that is registered (and is not the name itself)
    and options that it takes."""
    where = f"ablations[{name}]"
    nonempty_text(f"{where} name", name)
    if "method" not in options:
        raise ConfigError(f"{where}: needs a method, e.g. {{method: rose, balance: subtasks}}")
    if unknown := set(options) - ABLATION_KEYS:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(ABLATION_KEYS))}")
    from .selectors import SELECTORS

    if name in SELECTORS:
        raise ConfigError(f"{where}: the name of a registered method; name the variant otherwise")
    try:
        build(SelectConfig, options)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


@dataclass
class RunConfig(Section):
    run_dir: str = _f("runs/rose", "Where every stage writes its files.", path=True, check=nonempty_text)
    seed: int = _f(0, "Seed for sampling, training and projection.", check=NON_NEGATIVE)
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Base model."})
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA adapters (warm-up and fine-tune)."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Inputs."})
    warmup: WarmupConfig = field(default_factory=WarmupConfig, metadata={"help": "Warm-up training on a random share of the pool."})
    gradients: GradientConfig = field(default_factory=GradientConfig, metadata={"help": "Gradient collection and projection."})
    select: SelectConfig = field(default_factory=SelectConfig, metadata={"help": "Selection."})
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig, metadata={"help": "Final LoRA fine-tune on the selection."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    compare: CompareConfig = field(default_factory=CompareConfig, metadata={"help": "`rose compare`: baselines and sweeps."})
    report_to: list[str] = _f([], "Experiment trackers for losses, learning rates, stage timings and metrics: any of "
                                  "tensorboard (run_dir/tensorboard), wandb, mlflow, trackio (each its own package).",
                              check=each(check_available))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.select.options.precondition == "gist" and self.gradients.projection == "none":
            raise ConfigError("select.precondition=gist projects the stored features onto a subspace; exact scoring "
                              "(gradients.projection=none) stores cosines, not features")

    def with_shots(self, shots: str) -> RunConfig:
        """This config with its validation set replaced by compare.shots[shots] (a few-shot sweep's point)."""
        validation = dataclasses.replace(self.data.validation, paths=self.compare.shots[shots])
        return dataclasses.replace(self, data=dataclasses.replace(self.data, validation=validation))


# ----------------------------------------------------------------------------- building from dicts


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """Check (and where harmless, convert) a value against its field's type hint."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(name, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: {_short(value)} is not a valid {_type_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{name}: expected null, got {_short(value)}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
        key_type, value_type = typing.get_args(hint)
        return {_check_type(f"{name} key", str(k), key_type): _check_type(f"{name}[{k}]", v, value_type) for k, v in value.items()}
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_check_type(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{name}: expected {hint.__name__}, got {_short(value)}")
    return value


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def build(cls: type, data: dict, prefix: str = "", base_dir: Path | None = None) -> Any:
    """Make dataclass `cls` from a nested dict, checking names and types; resolve relative paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; valid: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():  # defaults are typed like given values (an int default of a float field becomes a float)
        hint = hints[name]
        if name not in data and not dataclasses.is_dataclass(hint):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kwargs[name] = _check_type(prefix + name, default, hint)
    data = {**{name: {} for name in fields if dataclasses.is_dataclass(hints[name])}, **data}
    for name, value in data.items():
        hint, key = hints[name], prefix + name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
            defaults = dataclasses.asdict(fields[name].default_factory())
            kwargs[name] = build(hint, _merge(defaults, value), key + ".", base_dir)
            continue
        value = _check_type(key, value, hint)
        if fields[name].metadata.get("path") and base_dir is not None and value is not None:
            value = _resolve_paths(value, base_dir)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}" if prefix and not str(e).startswith(prefix) else str(e)) from None


def _resolve_paths(value: Any, base_dir: Path) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_paths(v, base_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_paths(v, base_dir) for v in value]
    if is_hub(value):
        return value
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else base_dir / path)


def expand_globs(patterns: list[str]) -> list[str]:
    """Expand globs in order; a pattern matching nothing stays as is (the reader reports it missing)."""
    out: list[str] = []
    for p in patterns:
        matches = sorted(glob.glob(p)) if any(c in p for c in "*?[") else []
        out.extend(matches or [p])
    return out


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


#: What `rose run` records beside the settings in a run's config.yaml (`pipeline.record_config`):
#: which rose wrote it. Not settings, so a recorded config is read back without them.
RECORDED_KEYS = ("rose_version", "git_sha")


def load_config(path: str | Path | None, overrides: Sequence[str] = (), base: dict | None = None) -> RunConfig:
    """Read a YAML config (or start from `base`), apply overrides, and build a checked RunConfig.

    Relative paths in the file resolve against the file's folder; those given as overrides or in
    `base` resolve against the current directory. A run's recorded config.yaml reads back as it ran.
    Every value is checked here, so a typo is reported before any data or model is read; errors name
    the file (or the override) and the key.
    """
    data, base_dir, where = base or {}, Path.cwd(), None
    if path is not None:
        path = Path(path)
        data, base_dir, where = read_config_file(path), path.resolve().parent, str(path)
        data = {k: v for k, v in data.items() if k not in RECORDED_KEYS}
    try:
        config = build(RunConfig, data, base_dir=base_dir)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
    if overrides:
        extra: dict = {}
        for key, value in parse_overrides(list(overrides)):
            set_dotted(extra, key, value)
        try:
            config = build(RunConfig, _merge(dataclasses.asdict(config), extra), base_dir=Path.cwd())
        except ConfigError as e:
            raise ConfigError(f"command-line override: {e}") from None
    return config


def read_config_file(path: Path) -> dict:
    """The YAML mapping in a config file; one-line errors with the file (and line) for anything else."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start}); save the config as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{path}{line}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections (run_dir:, model:, data:, ...) "
                          f"at the top level, got a {type(data).__name__}")
    return data


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def describe(cls: type = RunConfig, prefix: str = "") -> str:
    """Every config key with its default and help, for `--help`."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            lines.append(f"{prefix}{f.name}:  {f.metadata.get('help', '')}")
            lines.append(describe(hint, prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {prefix}{f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
