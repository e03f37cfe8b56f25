"""Evaluation metrics against direct computations with the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rose.encoding import collate, encode
from rose.evaluate import golden_nll, preference_accuracy
from rose.formats import Origin
from conftest import lora_model

CPU = torch.device("cpu")


def _pairs(tokenizer):
    enc = lambda q, a: encode(tokenizer, ({"role": "user", "content": q},), a, 96, Origin("t"))
    return [(enc("Say yes.", "Yes."), enc("Say yes.", "No, never.")), (enc("Capital of France?", "Paris."), enc("Capital of France?", "Rome."))]


def test_untrained_adapter_ties_every_pair(tokenizer):
    model = lora_model()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.zeros_(p)  # B = 0: the adapter changes nothing
    res = preference_accuracy(model, _pairs(tokenizer), ["a", "b"], tokenizer.pad_token_id, 4096, CPU)
    assert res.heldout_pref_acc == 0.5 and res.reward_margin == 0.0 and res.per_subtask_acc == {"a": 0.5, "b": 0.5}


def test_margin_is_the_implicit_reward_difference(tokenizer):
    model = lora_model(seed=3)
    pairs = _pairs(tokenizer)

    def logp(seq, adapter):
        batch = collate([seq], tokenizer.pad_token_id)
        with torch.no_grad():
            if adapter:
                logits = model(input_ids=batch["input_ids"]).logits
            else:
                with model.disable_adapter():
                    logits = model(input_ids=batch["input_ids"]).logits
        return -F.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100, reduction="sum").item()

    reward = lambda s: logp(s, True) - logp(s, False)
    margins = [reward(c) - reward(r) for c, r in pairs]
    res = preference_accuracy(model, pairs, ["x", "x"], tokenizer.pad_token_id, 4096, CPU)
    assert abs(res.reward_margin - sum(margins) / 2) < 1e-3
    assert res.heldout_pref_acc == sum(m > 0 for m in margins) / 2
    seqs = [c for c, _ in pairs]
    nll = golden_nll(model, seqs, ["x", "y"], tokenizer.pad_token_id, 4096, CPU)
    tokens = sum(len(s) - s.n_prompt for s in seqs)
    assert nll.n_tokens == tokens
    assert abs(nll.golden_nll - (-sum(logp(s, True) for s in seqs) / tokens)) < 1e-4
