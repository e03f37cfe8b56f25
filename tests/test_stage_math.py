"""What the gradient stages of a finished run stored, recomputed from plain forwards and plain autograd:
the DPO reference is the base model (adapters off), validation gradients are plain and pool gradients
Adam's update direction, and each checkpoint's mean learning rate weights the scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from own_forward import own_logps

from rose.config import ModelConfig
from rose.grads import oracle
from rose.grads.adam import adam_direction
from rose.grads.project import make_projector
from rose.models import lora_parameters
from rose.store import shard_name


def test_dpo_reference_is_the_base_model_with_adapters_off(finished_run, base_model):
    """base_logprobs/validation_logps.npy, DPO's reference in val-grads, holds the log-probs of the
    model with no LoRA at all, and not those of the warmed-up adapter (which the gradients are taken at)."""
    run_dir, config, run = finished_run
    assert config.model.name == ModelConfig().name  # base_model is the run's base model
    assert not any("lora" in name for name, _ in base_model.named_modules())
    encoded = run.validation.encoded
    stored = np.load(run_dir / "base_logprobs/validation_logps.npy")
    base = own_logps(base_model, [s for pair in encoded for s in pair]).reshape(-1, 2)
    run.model.load_adapter(run.checkpoints()[-1].adapter)
    warm = own_logps(run.model.model, [s for pair in encoded for s in pair]).reshape(-1, 2)
    assert stored.shape == base.shape == (4, 2)
    assert np.abs(stored - base).max() < 2e-3  # float32 forwards, packed vs one at a time
    assert np.abs(stored - warm).max() > 0.1  # measured 0.62


def _cosines(a: np.ndarray | torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine of stored vectors (any float type) with recomputed ones."""
    a, b = torch.as_tensor(np.asarray(a, np.float64)), b.double()
    return F.cosine_similarity(a, b, dim=1).numpy()


def test_validation_gradients_are_plain_and_pool_gradients_adam_directions(finished_run):
    """At a warm-up checkpoint, the oracle's per-pair DPO gradients, projected with the run's map,
    are the stored validation features; the oracle's per-example SFT gradients turned into Adam's
    direction (that checkpoint's moments), projected, are the stored pool features. Each matches
    its own variant (cosine > 0.999, the float16 storage) and not the other one."""
    run_dir, config, run = finished_run
    g = config.gradients
    ckpt = run.checkpoints()[-1]
    run.model.load_adapter(ckpt.adapter)
    model, pad = run.model.model, run.model.pad_id
    params = list(lora_parameters(model).values())
    moments = ckpt.moments(run.model.param_names)
    projector = make_projector(g.projection, [p.numel() for p in params], g.dim, g.seed)

    encoded = run.validation.encoded
    ref = torch.from_numpy(np.load(run_dir / "base_logprobs/validation_logps.npy"))
    plain = torch.stack(list(oracle.dpo_grads(model, params, encoded, ref, g.dpo_beta, pad))).detach()
    stored = np.load(run_dir / "grads/val" / ckpt.path.name / "grads.npy")
    as_stored, as_pool = _cosines(stored, projector(plain)), _cosines(stored, projector(adam_direction(plain, moments)))
    assert as_stored.min() > 0.999 and as_pool.max() < 0.9, (as_stored, as_pool)

    rows = 6
    plain = torch.stack(list(oracle.sft_grads(model, params, run.pool.encoded[:rows], pad))).detach()
    stored = np.load(run_dir / "grads/train" / ckpt.path.name / shard_name(0, g.shard_size))[:rows]
    as_stored, as_val = _cosines(stored, projector(adam_direction(plain, moments))), _cosines(stored, projector(plain))
    assert as_stored.min() > 0.999 and as_val.max() < 0.9, (as_stored, as_val)


def _stored_features(run_dir, name: str, ckpts) -> list[np.ndarray]:
    if name == "val":
        return [np.load(run_dir / "grads/val" / c.path.name / "grads.npy").astype(np.float64) for c in ckpts]
    return [np.concatenate([np.load(f) for f in sorted((run_dir / "grads/train" / c.path.name).glob("shard-*.npy"))]).astype(np.float64)
            for c in ckpts]  # shard names are zero-padded row ranges: sorted by name is pool order


def _scores(train: list[np.ndarray], val: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The definition with one subtask: mean over validation items of sum_c w_c <train_c[n], val_c[m]>."""
    return sum(w * (t @ v.T) for w, t, v in zip(weights, train, val)).mean(axis=1)


def test_each_checkpoints_mean_learning_rate_weights_the_scores(finished_run):
    run_dir, _, run = finished_run
    ckpts = run.checkpoints()
    means = [np.mean(json.loads((c.path / "state.json").read_text())["lrs"]) for c in ckpts]
    weights = np.array(means) / np.sum(means)
    assert len(weights) == 2 and abs(weights[0] - weights[1]) > 0.1  # warm-up then decay: the epochs differ
    assert json.loads((run_dir / "scores/scores.json").read_text())["checkpoint_weights"] == pytest.approx(weights, abs=1e-12)
    assert set(json.loads((run_dir / "grads/val/manifest.json").read_text())["subtasks"]) == {"all"}
    train, val = _stored_features(run_dir, "train", ckpts), _stored_features(run_dir, "val", ckpts)
    scores = np.load(run_dir / "scores/scores.npy")
    assert np.abs(scores - _scores(train, val, weights)).max() < 1e-5
    assert np.abs(scores - _scores(train, val, np.full(2, 0.5))).max() > 5e-4  # measured 2.3e-3
