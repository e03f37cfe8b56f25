"""The fused LoRA forward computes what PEFT's own forward computes: outputs, weight gradients and
dropout masks; layers it cannot fuse run PEFT's forward."""

from __future__ import annotations

import pytest
import torch
import transformers
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from rose.config import LoraConfig
from rose.grads.fused_lora import fused_lora
from rose.models import add_lora, lora_parameters


def _tiny_llama(dtype=torch.float64):
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(dtype)


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks on both sides
    logits = model(input_ids=ids).logits
    loss = logits.float().logsumexp(-1).sum() - logits[..., 3].sum()
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in lora_parameters(model).items()}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train with dropout"])
def test_the_fused_forward_matches_peft_in_outputs_gradients_and_dropout(train):
    model = add_lora(_tiny_llama(), LoraConfig(r=4, alpha=12, dropout=0.3, target_modules=["q_proj", "v_proj", "o_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)  # B = 0 would hide a wrong scale or a missing term
    model.train(train)
    ids = torch.randint(0, 97, (2, 11))
    want_logits, want_grads = _loss_and_grads(model, ids)
    calls = []
    with fused_lora(model, lambda layer, x, h, out, scaling: calls.append(scaling)) as layers:
        got_logits, got_grads = _loss_and_grads(model, ids)
    assert len(layers) == 6 and calls == [3.0] * 6  # every LoRA layer went through the fused forward, alpha / r each
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-12, atol=1e-12)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-10, atol=1e-12)
    assert "forward" not in vars(layers[0])  # PEFT's forward is back after the block


def test_layers_it_cannot_fuse_run_peft_forward():
    """Adapters switched off (the DPO reference) and DoRA layers: PEFT's own forward, no record."""
    base = _tiny_llama()
    dora = get_peft_model(base, PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)).eval()
    ids = torch.randint(0, 97, (1, 9))
    calls = []
    with torch.no_grad():
        want = dora(input_ids=ids).logits
        with fused_lora(dora, lambda *a: calls.append(a)):
            got = dora(input_ids=ids).logits
            with dora.disable_adapter():
                off = dora(input_ids=ids).logits
        with dora.disable_adapter():
            want_off = dora(input_ids=ids).logits
    assert calls == []
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(off, want_off, rtol=0, atol=0)
