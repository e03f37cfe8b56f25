"""Typed configuration: one dataclass per stage, composed into `RunConfig`.

Each field's `help` text is what `rose config --help` prints. Paths in a YAML file are relative to
that file. Command-line overrides are `section.key=value`, the value parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _f(default: Any, help: str, path: bool = False) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, "path": path})
    return field(default=default, metadata={"help": help, "path": path})


@dataclass
class ModelConfig:
    name: str = _f("smollm2-135m-instruct", "Built-in name, hub id, local model folder or .gguf file.")
    dtype: str = _f("auto", "Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16, float64.")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N.")
    max_length: int = _f(512, "Longest tokenised example; longer responses are cut, longer prompts are an error.")
    overlong: str = _f("error", "What to do with a pool example whose prompt alone exceeds max_length: error or skip.")
    trust_remote_code: bool = _f(False, "Allow model repositories to run their own code (off unless you trust them).")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) for hub ids.")

    def __post_init__(self) -> None:
        _choice("model.dtype", self.dtype, ("auto", "float32", "bfloat16", "float16", "float64"))
        _choice("model.overlong", self.overlong, ("error", "skip"))
        _positive("model.max_length", self.max_length)


@dataclass
class LoraSettings:
    r: int = _f(128, "LoRA rank (paper: 128).")
    alpha: float = _f(512, "LoRA alpha (paper: 512).")
    dropout: float = _f(0.1, "LoRA dropout during training (gradients are taken without dropout).")
    target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "Module names that get adapters.")

    def __post_init__(self) -> None:
        _positive("lora.r", self.r)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class PreferenceSource:
    paths: list[str] = _f([], "Preference files (jsonl/json, gzipped or not); globs allowed.", path=True)
    format: str = _f("auto", "rose (paper's dict keyed by prompt), trl ({prompt, chosen, rejected}), hh (transcripts) or auto.")
    pairs: str = _f("target", "ROSE format only: 'target' = one (sft_target, rejected_target) pair per prompt; 'all' = every pair.")
    subtasks: str | int = _f("file", "Subtasks for the max-over-subtasks score: file, field, none, or N contiguous blocks.")
    limit: int | None = _f(None, "Use at most this many pairs (seeded random sample), for quick runs.")

    def __post_init__(self) -> None:
        _choice("format", self.format, ("auto", "rose", "trl", "hh"))
        _choice("pairs", self.pairs, ("target", "all"))


@dataclass
class DataConfig:
    pool: list[str] = _f([], "Training pool files in LESS format ({dataset, id, messages}); globs allowed.", path=True)
    pool_limit: int | None = _f(None, "Use a seeded random subset of this many pool examples (quick runs).")
    validation: PreferenceSource = field(default_factory=PreferenceSource, metadata={"help": "Few-shot preference set of the target task."})
    heldout: PreferenceSource = field(default_factory=lambda: PreferenceSource(pairs="all"), metadata={"help": "Held-out preference pairs for evaluation."})
    heldout_exclude_validation: bool = _f(True, "Drop held-out pairs whose prompt is a validation prompt.")
    heldout_exclude: list[str] = _f([], "Also drop held-out pairs whose prompt is in these preference files "
                                        "(e.g. every shot set of a few-shot sweep, so all share one held-out set).", path=True)
    test: list[str] = _f([], "Test prompts with golden answers ({prompt, golden_answer}); globs allowed.", path=True)
    test_limit: int | None = _f(None, "Use at most this many test prompts (seeded random sample).")
    empty_responses: str = _f("error", "A preference pair or test answer with an empty response: error, or skip it.")

    def __post_init__(self) -> None:
        _choice("data.empty_responses", self.empty_responses, ("error", "skip"))


@dataclass
class TrainSettings:
    epochs: int = _f(4, "Passes over the training data.")
    lr: float = _f(2e-5, "Peak learning rate (linear warm-up, then linear decay).")
    batch_size: int = _f(16, "Examples per optimizer step (across all processes).")
    micro_batch_tokens: int = _f(4096, "Padded tokens per forward/backward pass per process (a step's examples are "
                                       "grouped by length into such micro-batches; gradients are accumulated).")
    warmup_ratio: float = _f(0.03, "Share of steps spent warming up the learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_betas: list[float] = _f([0.9, 0.999], "AdamW betas (also used for the Adam gradient direction).")
    adam_eps: float = _f(1e-8, "AdamW epsilon (also used for the Adam gradient direction).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    resume_every: int = _f(100, "Optimizer steps between resume points inside an epoch (0: only epoch ends): a run "
                                "stopped mid-epoch restarts from the last one and ends with the same weights.")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "micro_batch_tokens"):
            _positive(name, getattr(self, name))


@dataclass
class WarmupConfig(TrainSettings):
    fraction: float = _f(0.05, "Share of the pool (random, seeded) used for warm-up training.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction("warmup.fraction", self.fraction)


@dataclass
class GradientConfig:
    projection: str = _f("sparse", "Random projection: sparse (balanced CountSketch), dense (Rademacher), or none "
                         "(exact cosines with the full validation gradients; stores [N, M] instead of [N, d]).")
    dim: int = _f(32768, "Projected dimension (stored as float16). 32768 keeps influence scores within Spearman "
                         "0.97 of exact on SmolLM2/SHP; the paper's 8192 gave 0.92 (docs/benchmarks.md).")
    seed: int = _f(0, "Projection seed; the same matrix in every process and run.")
    batch_tokens: int = _f(4096, "Tokens in one gradient or evaluation pass (examples are packed into rows with no padding).")
    shard_size: int = _f(1024, "Examples per gradient shard file (the unit of resume).")
    compile_blocks: bool = _f(True, "On a GPU, torch.compile the decoder's norms and MLPs for the gradient passes "
                                    "(+18% on an 8B model; a one-off compile of tens of seconds). Set false if "
                                    "compilation fails for your model or platform; results are the same either way.")
    dpo_beta: float = _f(0.1, "DPO beta for the validation gradient.")

    def __post_init__(self) -> None:
        _choice("gradients.projection", self.projection, ("sparse", "dense", "none"))
        for name in ("dim", "batch_tokens", "shard_size"):
            _positive(f"gradients.{name}", getattr(self, name))


METHODS = ("rose", "less", "random", "bm25", "embedding", "full")
GRADIENT_METHODS = ("rose", "less")


@dataclass
class SelectConfig:
    fraction: float = _f(0.05, "Share of the pool to select (top scores).")
    method: str = _f("rose", "rose (DPO validation gradients), less (SFT validation gradients of the chosen responses), "
                             "random, bm25 (against validation prompts + chosen), embedding (base model's mean hidden "
                             "state, cosine), or full (the whole pool).")
    seed: int = _f(0, "Seed of the random baseline.")

    def __post_init__(self) -> None:
        _fraction("select.fraction", self.fraction)
        _choice("select.method", self.method, METHODS)


@dataclass
class JudgeSettings:
    enabled: bool = _f(False, "Also measure an LLM-judge win rate against the golden answers (needs an endpoint).")
    base_url: str | None = _f(None, "OpenAI-compatible endpoint; default: $ROSE_JUDGE_BASE_URL, else the OpenAI API.")
    model: str = _f("gpt-4o", "Judge model name at the endpoint.")
    api_key_env: str = _f("OPENAI_API_KEY", "Environment variable holding the endpoint's API key.")
    max_prompts: int = _f(100, "Test prompts to generate answers for and judge (seeded sample).")
    max_new_tokens: int = _f(256, "Longest generated answer, in tokens.")


@dataclass
class EvalConfig:
    batch_size: int = _f(8, "Sequences per evaluation forward pass.")
    judge: JudgeSettings = field(default_factory=JudgeSettings, metadata={"help": "Optional LLM-judge win rate."})


@dataclass
class CompareConfig:
    methods: list[str] = _f(list(METHODS), "Methods of the main comparison, all at select.fraction.")
    random_seeds: list[int] = _f([0, 1, 2], "Seeds of the random baseline (mean and spread are reported).")
    budgets: list[float] = _f([0.01, 0.05, 0.1, 0.2], "Data budgets (shares of the pool) for the budget sweep.")
    budget_methods: list[str] = _f(["rose", "less", "random"], "Methods of the budget sweep.")
    shots: dict[str, list[str]] = _f({}, "Few-shot sweep: name -> validation files (e.g. {'1': [...], '10': [...]}).", path=True)
    shot_methods: list[str] = _f(["rose", "less"], "Methods of the few-shot sweep (at select.fraction).")
    full_epochs: int = _f(1, "Fine-tuning epochs on the full pool (it is 1/fraction times larger than a selection).")
    results_json: str | None = _f(None, "Also write the main results here (e.g. docs/results/shp.json).", path=True)
    cache_dir: str | None = _f(None, "Shared stage folders (default run_dir/cache); point several tasks at one to share "
                                     "the warm-up and pool gradients.", path=True)

    def __post_init__(self) -> None:
        for m in [*self.methods, *self.budget_methods, *self.shot_methods]:
            _choice("compare methods", m, METHODS)
        for b in self.budgets:
            _fraction("compare.budgets", b)


@dataclass
class RunConfig:
    run_dir: str = _f("runs/rose", "Where every stage writes its files.", path=True)
    seed: int = _f(0, "Seed for sampling, training and projection.")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Base model."})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA adapters (warm-up and fine-tune)."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Inputs."})
    warmup: WarmupConfig = field(default_factory=WarmupConfig, metadata={"help": "Warm-up training on a random share of the pool."})
    gradients: GradientConfig = field(default_factory=GradientConfig, metadata={"help": "Gradient collection and projection."})
    select: SelectConfig = field(default_factory=SelectConfig, metadata={"help": "Selection."})
    finetune: TrainSettings = field(default_factory=TrainSettings, metadata={"help": "Final LoRA fine-tune on the selection."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    compare: CompareConfig = field(default_factory=CompareConfig, metadata={"help": "`rose compare`: baselines and sweeps."})


# ----------------------------------------------------------------------------- validation helpers


def _choice(name: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ConfigError(f"{name}: unknown value {value!r}; expected one of {', '.join(map(str, options))}")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _fraction(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}")


# ----------------------------------------------------------------------------- building from dicts


def _check_type(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(name, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: {value!r} is not a valid {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{name}: expected null, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint)
        return {_check_type(f"{name} key", str(k), key_type): _check_type(f"{name}[{k}]", v, value_type) for k, v in value.items()}
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
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
        raise ConfigError(f"{name}: expected {hint.__name__}, got {value!r}")
    return value


def build(cls: type, data: dict, prefix: str = "", base_dir: Path | None = None) -> Any:
    """Make dataclass `cls` from a nested dict, checking names and types; resolve relative paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in sorted(unknown))}; valid: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        hint, key = hints[name], prefix + name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping, got {value!r}")
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


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """Read a YAML config (or start from `base`), apply overrides, and build a checked RunConfig.

    Relative paths in the file resolve against the file's folder; those given as overrides or in
    `base` resolve against the current directory.
    """
    data: dict = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        base_dir = path.resolve().parent
    elif base is not None:
        data = base
    config = build(RunConfig, data, base_dir=base_dir)
    if overrides:
        extra: dict = {}
        for key, value in parse_overrides(list(overrides)):
            set_dotted(extra, key, value)
        merged = _merge(dataclasses.asdict(config), extra)
        config = build(RunConfig, merged, base_dir=Path.cwd())
    return config


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
