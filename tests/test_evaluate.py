"""Evaluation: metric functions on known log-probs, and the log-probs themselves against the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import lora_model

from rose.encoding import collate, encode
from rose.evaluate import dpo_loss, golden_nll, preference_metrics
from rose.formats import Origin
from rose.grads.engine import sequence_logprobs


def test_preference_metrics_from_known_log_probs():
    tuned = np.array([[-10.0, -12.0], [-5.0, -4.0], [-8.0, -8.0], [-20.0, -9.0]])
    base = np.array([[-11.0, -11.0], [-5.0, -5.0], [-8.0, -8.0], [-22.0, -10.0]])
    counts = np.array([[10, 10], [5, 2], [4, 4], [20, 3]])
    res = preference_metrics(tuned, base, counts, ["a", "a", "b", "b"])
    # rewards (chosen, rejected): (1, -1), (0, 1), (0, 0), (2, 1) -> margins 2, -1, 0, 1
    assert res.heldout_pref_acc == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert res.reward_margin == pytest.approx(0.5)
    assert res.per_subtask_acc == {"a": 0.5, "b": 0.75}
    # per-token log-probs: (-1, -1.2), (-1, -2), (-2, -2), (-1, -3)
    assert res.length_norm_pref_acc == pytest.approx((1 + 1 + 0.5 + 1) / 4)


def test_dpo_loss_and_nll_match_their_formulas():
    tuned, base = np.array([[-3.0, -7.0], [-4.0, -1.0]]), np.array([[-5.0, -5.0], [-2.0, -2.0]])
    margins = torch.tensor([4.0, -3.0])
    assert dpo_loss(tuned, base, 0.1) == pytest.approx(float(-F.logsigmoid(0.1 * margins).mean()))
    res = golden_nll(np.array([-6.0, -2.0, -9.0]), np.array([3, 1, 6]), ["x", "y", "x"])
    assert res.golden_nll == pytest.approx(17 / 10) and res.per_subtask_nll == {"x": 15 / 9, "y": 2.0} and res.n_tokens == 10


def test_sequence_logprobs_match_a_direct_forward(tokenizer):
    model = lora_model(seed=3)
    seqs = [encode(tokenizer, ({"role": "user", "content": q},), a, 96, Origin("t"))
            for q, a in [("Say yes.", "Yes."), ("Capital of France?", "Paris, the capital, on the Seine.")]]
    logps, counts = sequence_logprobs(model, seqs, 4096, torch.device("cpu"))
    for seq, lp, n in zip(seqs, logps, counts):
        batch = collate([seq], tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        want = -F.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100, reduction="sum")
        assert abs(float(lp) - float(want)) < 1e-3 and int(n) == len(seq) - seq.n_prompt
