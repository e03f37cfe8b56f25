"""Whether rose computes a loaded model's log-probs and LoRA gradients right, checked on the model.

What differs between decoder families is handled where it happens: sliding windows, attention
soft-caps and scales in `grads/attention.py`, logit scaling and soft-caps in `grads/losses.py`
(`LogitFinish`), LoRA targets in `models.attention_projections`; `tests/test_families.py` holds
each family to its own forward pass. A model whose forward does something else (a family nobody
has tried, or a config transformers itself runs differently per attention kernel) is caught
here, before any stage runs: a few synthetic sequences go through rose's packed passes and
through the model's own forward pass with plain autograd, and their response log-probs and
per-example LoRA gradients must agree. It costs a few forward and backward passes of a few dozen
tokens, or of just past the shortest sliding window where `model.max_length` reaches past it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from peft import PeftModel

from .distributed import whole_gradients
from .encoding import Encoded
from .errors import ConfigError
from .grads.engine import per_example_grads, sequence_logprobs
from .grads.losses import SFTLoss, sft_losses
from .models import lora_parameters

#: The reference is the model's own forward pass and plain autograd in float32 (in float64 for a
#: float64 model): rose's packed passes in the run's dtype must be within MARGIN times the error of
#: the model's own forward in that dtype, plus FLOOR. In float32 the model's own forward is the
#: reference (its error is 0) and FLOOR leaves room for a deep model's rounding (SmolLM2: 8e-5).
#: In 16 bits two computations of the same function round differently (FlashAttention against the
#: model's attention): the model's own bf16 forward is itself up to 0.09 nats per token from float32
#: on Gemma 3, and with fresh adapters (B = 0) a gradient made of few, cancelling terms is noise in
#: both. Measured against float32, rose is held to what transformers itself achieves in that dtype.
#: The real Gemma 3 270M in bf16 on a CPU, fresh adapters: rose 0.20 nats/token and 0.20 relative
#: gradient error, its own bf16 forward 0.13 and 0.09 (2.2x on the gradient), hence 3.
#: What the check is for (a window, a soft-cap or a logit scale not applied) moves both by far more
#: (0.1 to 10).
MARGIN = 3.0
FLOOR = {torch.float64: 1e-6, torch.float32: 1e-2, torch.bfloat16: 0.02, torch.float16: 0.02}

_supported: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class SupportErrors:
    """How far one computation is from the reference."""

    logprob: float  # largest |difference| of a sequence's summed response log-prob, per response token
    gradient: float  # largest relative L2 error of one example's LoRA gradient


@dataclass(frozen=True)
class SupportReport:
    """rose's packed passes and the model's own forward pass, both in the model's dtype, against
    the reference (the model's own forward and autograd in `reference_dtype`)."""

    rose: SupportErrors
    own: SupportErrors
    dtype: torch.dtype
    reference_dtype: torch.dtype

    def limit(self, what: str) -> float:
        return MARGIN * getattr(self.own, what) + FLOOR.get(self.dtype, FLOOR[torch.bfloat16])

    def disagreements(self) -> list[str]:
        names = {"logprob": "response log-probs (nats per token)", "gradient": "per-example LoRA gradients (relative error)"}
        return [f"{label} differ by {getattr(self.rose, what):.2g} (the model's own {_name(self.dtype)} forward: "
                f"{getattr(self.own, what):.2g}; limit {self.limit(what):.2g})"
                for what, label in names.items() if not getattr(self.rose, what) <= self.limit(what)]


def probe_sequences(model: PeftModel, max_length: int, seed: int = 0) -> list[Encoded]:
    """Two random-token sequences of different lengths, the longest just past the shortest sliding
    window where max_length lets a sequence reach past it (and 24 tokens otherwise); the last few
    tokens of each are its response, so the logits are few even for a long window."""
    config = model.get_base_model().config.get_text_config()
    window = getattr(config, "sliding_window", None) or 0
    longest = min(max_length, max(24, window + 8))
    gen = torch.Generator().manual_seed(seed)
    lengths = [longest, max(2, longest // 2 + 1)]
    return [Encoded(tuple(torch.randint(config.vocab_size, (n,), generator=gen).tolist()), n - min(8, n // 2)) for n in lengths]


def measure_support(model: PeftModel, sequences: list[Encoded]) -> SupportReport:
    """Packed response log-probs and per-example SFT gradients (the engine), and each sequence's
    own forward pass (`model(input_ids).logits`, unpacked) with autograd, both in the model's dtype,
    against the own forward in float32 (weights cast up in place and back, which is exact; compiled
    blocks run eagerly there). Quantized and sharded models are their own reference. Dropout off
    (the model's train/eval mode is restored after)."""
    training = model.training
    model.eval()
    try:
        rose = _packed(model, sequences)
        own = _own(model, sequences)
        dtype = model.get_base_model().dtype
        reference, reference_dtype = own, dtype
        if dtype.itemsize < 4 and _can_cast(model):
            reference_dtype = torch.float32
            with _cast_weights(model, reference_dtype), torch.compiler.set_stance("force_eager"):
                reference = _own(model, sequences)
        return SupportReport(_errors(rose, reference), _errors(own, reference), dtype, reference_dtype)
    finally:
        model.train(training)


def _packed(model: PeftModel, sequences: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """([N] summed response log-probs, [N, D] SFT gradients, [N] response lengths) from rose's packed passes."""
    names, params = zip(*lora_parameters(model).items())
    device = params[0].device
    budget = sum(len(s) for s in sequences)
    (idx, segments), = list(per_example_grads(model, list(names), sequences, SFTLoss(), budget, device))
    grads = torch.cat([g.float() for g in segments], dim=1)[torch.argsort(torch.tensor(idx))]  # [N, D] on the device
    logps, counts = sequence_logprobs(model, sequences, budget, device)
    return logps.double(), grads, counts


def _own(model: PeftModel, sequences: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same from the model's own forward pass on each sequence alone, and plain autograd."""
    params = list(lora_parameters(model).values())
    device = params[0].device
    logps, grads = [], []
    for seq in sequences:
        ids = torch.tensor([seq.input_ids], device=device)
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(seq) - seq.n_prompt + 1).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, seq.n_prompt :, None]).sum()
        loss = sft_losses(logp[None], torch.tensor([len(seq) - seq.n_prompt], device=device)).sum()
        grads.append(torch.cat([g.float().flatten() for g in whole_gradients(loss, params)]))
        logps.append(float(logp.detach()))
    return torch.tensor(logps, dtype=torch.float64), torch.stack(grads), torch.tensor([len(s) - s.n_prompt for s in sequences])


def _errors(got: tuple, want: tuple) -> SupportErrors:
    (logp, grad, counts), (want_logp, want_grad, _) = got, want
    logprob = ((logp.cpu() - want_logp.cpu()).abs() / counts.cpu()).max()
    gradient = ((grad - want_grad).norm(dim=1) / want_grad.norm(dim=1).clamp(min=1e-30)).max()
    return SupportErrors(float(logprob), float(gradient))


def _can_cast(model: PeftModel) -> bool:
    """Whether the weights can be cast up for the reference: not quantized, not sharded (DTensor)."""
    from torch.distributed.tensor import DTensor

    base = model.get_base_model()
    return getattr(base, "hf_quantizer", None) is None and not any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def _cast_weights(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Every floating parameter and buffer narrower than `dtype` cast up to it, and back after:
    casting up and down again restores the same values, and only one copy is held at a time."""
    cast = [(t, t.dtype) for t in [*model.parameters(), *model.buffers()] if t.is_floating_point() and t.dtype.itemsize < dtype.itemsize]
    for t, _ in cast:
        t.data = t.data.to(dtype)
    try:
        yield
    finally:
        for t, before in cast:
            t.data = t.data.to(before)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_model_support(model: PeftModel, name: str, max_length: int) -> None:
    """Raise a one-line ConfigError naming the model and what disagrees, unless rose's packed passes
    reproduce the model's own log-probs and LoRA gradients as well as its own forward pass does in
    the same dtype (once per loaded model)."""
    if model in _supported:
        return
    base = model.get_base_model()
    try:
        with _one_thread_on_cpu(base.device):
            report = measure_support(model, probe_sequences(model, max_length))
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError, TypeError) as e:  # the engine refuses the model's LoRA layers, or its forward our arguments
        raise ConfigError(f"model.name: {name} ({type(base).__name__}) is not supported: {str(e).splitlines()[0]}") from e
    if wrong := report.disagreements():
        raise ConfigError(f"model.name: {name} ({type(base).__name__}) is not supported: rose's packed passes in "
                          f"{_name(report.dtype)} disagree with the model's own forward pass in {_name(report.reference_dtype)}: "
                          f"{'; '.join(wrong)}")
    _supported.add(model)


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """The check's passes are a few dozen tokens: on a CPU, threads only add hand-offs, and on busy
    cores they cost far more than the arithmetic."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
