"""Evaluation: metric functions on known log-probs, and the log-probs themselves against the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import lora_model
from own_forward import own_logps

from rose.encoding import collate, encode
from rose.evaluate import dpo_loss, golden_nll, pair_correctness, preference_metrics
from rose.formats import Origin
from rose.grads.engine import sequence_logprobs
from rose.store import read_json


def test_preference_metrics_from_known_log_probs():
    tuned = np.array([[-10.0, -12.0], [-5.0, -4.0], [-8.0, -8.0], [-20.0, -9.0]])
    base = np.array([[-11.0, -11.0], [-5.0, -5.0], [-8.0, -8.0], [-22.0, -10.0]])
    counts = np.array([[10, 10], [5, 2], [4, 4], [20, 3]])
    res = preference_metrics(tuned, base, counts, ["a", "a", "b", "b"])
    # rewards (chosen, rejected): (1, -1), (0, 1), (0, 0), (2, 1) -> margins 2, -1, 0, 1
    assert res.heldout_pref_acc == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert res.reward_margin == pytest.approx(0.5)
    assert res.per_subtask_acc == {"a": 0.5, "b": 0.75}
    assert pair_correctness(tuned, base).tolist() == [1, 0, 0.5, 1]
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


def test_evaluate_stage_metrics_are_those_of_plain_forwards(finished_run, base_model):
    """eval/metrics.json against the formulas applied to log-probs from the models' own forward
    passes: the fine-tuned adapter and the base model (no LoRA) on the held-out pairs, the
    validation pairs and the golden test answers."""
    run_dir, config, run = finished_run
    metrics = read_json(run_dir / "eval/metrics.json")
    tune = run.require("finetune")
    run.model.load_adapter(tune.path / tune.manifest()["adapter"])
    flat = lambda pairs: [s for pair in pairs for s in pair]
    sets = {"heldout": flat(run.heldout.encoded), "validation": flat(run.validation.encoded), "test": run.tests.encoded}
    tuned = {k: own_logps(run.model.model, v) for k, v in sets.items()}
    base = {k: own_logps(base_model, v) for k, v in sets.items()}
    counts = {k: np.array([len(s) - s.n_prompt for s in v]) for k, v in sets.items()}

    reward = tuned["heldout"] - base["heldout"]
    margin = reward[0::2] - reward[1::2]
    assert len(margin) == metrics["n_pairs"] == 8
    assert metrics["reward_margin"] == pytest.approx(margin.mean(), abs=2e-3)
    reward = tuned["validation"] - base["validation"]
    val_margin = reward[0::2] - reward[1::2]
    beta = config.gradients.dpo_beta
    assert metrics["val_dpo_loss"] == pytest.approx(np.mean(np.log1p(np.exp(-beta * val_margin))), abs=1e-4)
    assert metrics["n_tokens"] == counts["test"].sum()
    assert metrics["golden_nll"] == pytest.approx(-tuned["test"].sum() / counts["test"].sum(), abs=5e-4)
    assert metrics["base_golden_nll"] == pytest.approx(-base["test"].sum() / counts["test"].sum(), abs=5e-4)

    per_token = tuned["heldout"] / counts["heldout"]
    assert np.abs(margin).min() > 1e-2 and np.abs(per_token[0::2] - per_token[1::2]).min() > 1e-3  # no near ties
    assert metrics["heldout_pref_acc"] == np.mean(margin > 0)
    assert np.load(run_dir / "eval/heldout_correct.npy").tolist() == (margin > 0).tolist()  # pair by pair, in order
    assert metrics["per_subtask_acc"] == {"all": np.mean(margin > 0)}
    assert metrics["length_norm_pref_acc"] == np.mean(per_token[0::2] > per_token[1::2])
