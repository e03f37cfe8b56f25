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

#: Largest disagreement accepted, by the model's dtype: per-token log-prob error (nats) and the
#: relative L2 error of each example's gradient. Float32 leaves room for a deep model's rounding
#: (SmolLM2: 8e-5); half precision rounds differently in the FlashAttention kernel and in the
#: model's own attention. What the check is for (a window, a soft-cap or a logit scale not
#: applied) moves both by far more (0.1 to 10).
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-2, torch.bfloat16: 0.1, torch.float16: 0.1}

_supported: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class SupportErrors:
    """How far rose's packed passes are from the model's own forward pass and plain autograd."""

    logprob: float  # largest |difference| of a sequence's summed response log-prob, per response token
    gradient: float  # largest relative L2 error of one example's LoRA gradient


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


def measure_support(model: PeftModel, sequences: list[Encoded]) -> SupportErrors:
    """Packed response log-probs and per-example SFT gradients (the engine) against each sequence's
    own forward pass (`model(input_ids).logits`, unpacked) and autograd, one sequence at a time,
    with dropout off (the model's train/eval mode is restored after)."""
    training = model.training
    model.eval()
    try:
        return _measure(model, sequences)
    finally:
        model.train(training)


def _measure(model: PeftModel, sequences: list[Encoded]) -> SupportErrors:
    names, params = zip(*lora_parameters(model).items())
    device = params[0].device
    budget = sum(len(s) for s in sequences)
    (idx, segments), = list(per_example_grads(model, list(names), sequences, SFTLoss(), budget, device))
    packed_grads = torch.cat([g.float() for g in segments], dim=1)[torch.argsort(torch.tensor(idx))]  # [2, D] on the device
    packed_logps, counts = sequence_logprobs(model, sequences, budget, device)
    logprob, gradient = 0.0, 0.0
    for seq, got_logp, got_grad, n in zip(sequences, packed_logps, packed_grads, counts):
        ids = torch.tensor([seq.input_ids], device=device)
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=len(seq) - seq.n_prompt + 1).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, seq.n_prompt :, None]).sum()
        loss = sft_losses(logp[None], torch.tensor([len(seq) - seq.n_prompt], device=device)).sum()
        want = torch.cat([g.float().flatten() for g in whole_gradients(loss, params)])
        logprob = max(logprob, abs(float(got_logp) - float(logp.detach())) / int(n))
        gradient = max(gradient, float((got_grad - want).norm() / want.norm().clamp(min=1e-30)))
    return SupportErrors(logprob, gradient)


def check_model_support(model: PeftModel, name: str, max_length: int) -> None:
    """Raise a one-line ConfigError naming the model and what disagrees, unless rose's packed passes
    reproduce the model's own log-probs and LoRA gradients (once per loaded model)."""
    if model in _supported:
        return
    base = model.get_base_model()
    tolerance = TOLERANCE.get(base.dtype, 0.1)
    try:
        with _one_thread_on_cpu(base.device):
            errors = measure_support(model, probe_sequences(model, max_length))
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError, TypeError) as e:  # the engine refuses the model's LoRA layers, or its forward our arguments
        raise ConfigError(f"model.name: {name} ({type(base).__name__}) is not supported: {str(e).splitlines()[0]}") from e
    what = {"response log-probs (nats per token)": errors.logprob, "per-example LoRA gradients (relative error)": errors.gradient}
    wrong = [f"{k} differ by {v:.2g}" for k, v in what.items() if not v <= tolerance]
    if wrong:
        raise ConfigError(f"model.name: {name} ({type(base).__name__}) is not supported: rose's packed passes disagree with "
                          f"the model's own forward pass: {'; '.join(wrong)} (tolerance {tolerance:g} in {base.dtype})")
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
