"""Every pass that forms logits keeps them to `LOGITS_PER_CHUNK` at a time, whatever the vocabulary.

A tiny Llama with a 65,536-token vocabulary (Gemma 3 has 262k): 96 response tokens would form
6.3M logits at once. Every tensor any aten op creates, forward and backward, is watched
(`LargestTensor`); with the limit set to 2^18, none may exceed it, while the results (log-probs,
per-example SFT and DPO gradients, a training step's loss) stay those of the model's own forward
pass and autograd.
"""

from __future__ import annotations

import pytest
import torch
from own_forward import own_logp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from rose.config import LoraConfig
from rose.encoding import Encoded, pack
from rose.grads import engine, losses
from rose.grads.losses import DPOLoss, SFTLoss, response_logprobs
from rose.models import add_lora, lora_parameters

VOCAB, LIMIT = 65_536, 2**18


class LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an op allocates while the mode is on (views of
    its inputs, such as the transposed LM head weight, are not allocations)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given]
        self.largest = max([self.largest, *sizes])
        return out


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=128)
    base = LlamaForCausalLM(config).eval()
    base.requires_grad_(False)
    peft = add_lora(base, LoraConfig(r=2, alpha=4, dropout=0.0))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return peft.eval()


SEQS = [Encoded(tuple(torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist()), p)
        for p, n in [(8, 40), (4, 36), (10, 42)]]  # 96 response tokens in all
PAIR = [(SEQS[0], SEQS[1])]


def flat(batches) -> dict[int, torch.Tensor]:
    return {i: g for idx, segments in batches for i, g in zip(idx, torch.cat([s.float() for s in segments], dim=1))}


@pytest.fixture
def limited(monkeypatch):
    monkeypatch.setattr(losses, "LOGITS_PER_CHUNK", LIMIT)


def test_without_chunks_the_watch_sees_the_whole_logits_block(model):
    """The measurement can fail: with a limit above the pack's logits, the [96, 65536] block appears."""
    with LargestTensor() as watch:
        response_logprobs(model, pack(SEQS))
    assert watch.largest >= 96 * VOCAB


def test_log_probs_and_gradients_form_no_more_logits_than_the_limit_and_match_autograd(model, limited):
    names, params, cpu = list(lora_parameters(model)), list(lora_parameters(model).values()), torch.device("cpu")
    with LargestTensor() as watch:
        logps, counts = engine.sequence_logprobs(model, SEQS, 10_000, cpu)
        sft = flat(engine.per_example_grads(model, names, SEQS, SFTLoss(), 10_000, cpu))
        reference = torch.tensor([[-300.0, -310.0]], dtype=torch.float64)
        dpo = flat(engine.per_example_grads(model, names, PAIR, DPOLoss(reference, 0.1), 10_000, cpu))
    assert watch.largest <= LIMIT, f"an op made a tensor of {watch.largest} elements"

    want = [own_logp(model, s) for s in SEQS]
    assert torch.allclose(logps, torch.stack(want).detach().double(), atol=1e-4)
    for i, (lp, n) in enumerate(zip(want, counts)):
        g = torch.cat([x.flatten() for x in torch.autograd.grad(-lp / n, params, retain_graph=True)])
        assert torch.allclose(sft[i], g, rtol=1e-4, atol=1e-7), f"SFT gradient of example {i}"
    margin = (want[0] - reference[0, 0]) - (want[1] - reference[0, 1])
    g = torch.cat([x.flatten() for x in torch.autograd.grad(-torch.nn.functional.logsigmoid(0.1 * margin), params)])
    assert torch.allclose(dpo[0], g, rtol=1e-4, atol=1e-7), "DPO gradient"


def test_a_training_step_forms_no_more_logits_than_the_limit(model, limited):
    """The warm-up's and fine-tune's loss (`ResponseLogprobs`, backward into the LoRA weights)."""
    params = list(lora_parameters(model).values())
    batch = pack(SEQS)
    with LargestTensor() as watch:
        logp, n = losses.ResponseLogprobs(model)(batch)
        loss = losses.sft_losses(logp, n).mean()
        got = torch.autograd.grad(loss, params)
    assert watch.largest <= LIMIT
    want = torch.autograd.grad(torch.stack([-own_logp(model, s) / (len(s) - s.n_prompt) for s in SEQS]).mean(), params)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(got, want))


def test_a_trained_lm_head_is_refused_rather_than_left_without_its_gradient(model, limited):
    head = model.get_base_model().lm_head
    head.weight.requires_grad_(True)
    try:
        with pytest.raises(ValueError, match="LM head is trained"):
            response_logprobs(model, pack(SEQS))
    finally:
        head.weight.requires_grad_(False)
