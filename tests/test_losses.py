"""The losses against their formulas: DPO with hand numbers, log-probs as sums of the model's own token log-probs."""

from __future__ import annotations

import math

import pytest
import torch
from float64_model import truly_float64

from rose.encoding import Encoded, collate, pack
from rose.grads.losses import dpo_losses, response_logprobs, sft_losses

# (policy chosen, policy rejected, reference chosen, reference rejected): margins 3, -3 (the same pair
# with chosen and rejected swapped) and 0 (policy = reference)
LOGPS = torch.tensor([[-10.0, -14.0, -11.0, -12.0], [-14.0, -10.0, -12.0, -11.0], [-5.0, -9.0, -5.0, -9.0]], dtype=torch.float64)
# -log sigmoid(beta * m) = log(1 + exp(-beta * m)), worked out by hand for m = 3, -3, 0
HAND = {0.1: [0.5543552444685271, 0.8543552444685272, math.log(2)], 0.5: [0.2014132779827524, 1.7014132779827524, math.log(2)]}


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_is_the_formula_with_hand_numbers(beta):
    loss = dpo_losses(*LOGPS.T, beta)
    assert loss.tolist() == pytest.approx(HAND[beta], abs=1e-12)
    assert loss[0] < math.log(2) < loss[1]  # the policy preferring the chosen response more than the reference does lowers it
    assert float(loss[1] - loss[0]) == pytest.approx(beta * 3, abs=1e-12)  # softplus(x) - softplus(-x) = x: beta scales the margin
    pc, pr, rc, rr = LOGPS[0]
    assert float(dpo_losses(rc, rr, pc, pr, beta)) == pytest.approx(HAND[beta][1], abs=1e-12)  # policy and reference are not interchangeable


def _tiny_llama(seed: int):
    """A 2-layer random Llama in float64 (truly: `float64_model`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128)
    return truly_float64(LlamaForCausalLM(config).double().eval())


def _hand_sums(model, examples: list[Encoded]) -> torch.Tensor:
    """Each example's response log-prob summed by hand from the model's own forward pass and log_softmax."""
    sums = []
    for e in examples:
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0], dim=-1)
        sums.append(sum(float(logp[t - 1, e.input_ids[t]]) for t in range(e.n_prompt, len(e))))
    return torch.tensor(sums, dtype=torch.float64)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_log_probs_are_summed_over_response_tokens_and_feed_dpo_as_sums(layout):
    policy, reference = _tiny_llama(0), _tiny_llama(1)
    gen = torch.Generator().manual_seed(2)
    # (length, prompt length): chosen and rejected of two pairs, responses of 4 to 11 tokens
    examples = [Encoded(tuple(torch.randint(0, 64, (n,), generator=gen).tolist()), p) for n, p in [(12, 5), (9, 5), (20, 9), (15, 11)]]
    batch = collate(examples, 0) if layout == "padded" else pack(examples)
    with torch.no_grad():
        logp, counts = response_logprobs(policy, batch)
        ref, _ = response_logprobs(reference, batch)
    want, want_ref = _hand_sums(policy, examples), _hand_sums(reference, examples)
    assert counts.tolist() == [7, 4, 11, 4]
    assert torch.allclose(logp, want, rtol=1e-12, atol=0)
    assert torch.allclose(sft_losses(logp, counts), -want / torch.tensor([7.0, 4, 11, 4], dtype=torch.float64), rtol=1e-12, atol=0)
    margin = (want[0::2] - want_ref[0::2]) - (want[1::2] - want_ref[1::2])
    assert margin.abs().min() > 0.1  # policy and reference disagree on both pairs: the loss depends on every term
    loss = dpo_losses(logp[0::2], logp[1::2], ref[0::2], ref[1::2], 0.1)
    assert torch.allclose(loss, torch.log1p(torch.exp(-0.1 * margin)), rtol=1e-12, atol=0)
