"""LoRA training: checkpoints hold adapter, AdamW moments by name and lrs; a resumed run is identical."""

from __future__ import annotations

import shutil

import pytest
import torch

from rose.config import LoraSettings, ModelConfig, TrainSettings
from rose.distributed import Dist
from rose.encoding import encode_example
from rose.formats import read_pool
from rose.models import add_lora, load_model, lora_parameters
from rose.store import load_tensors
from rose.train import Checkpoint, lr_at, train_lora

SETTINGS = TrainSettings(epochs=2, lr=1e-3, batch_size=2, micro_batch_tokens=64, warmup_ratio=0.25)


def _train(tokenizer, examples, out, seed=0):
    torch.manual_seed(seed)
    model = add_lora(load_model(ModelConfig(device="cpu")), LoraSettings(r=2, alpha=8, dropout=0.0))
    ckpts = train_lora(model, examples, SETTINGS, out, tokenizer.pad_token_id, seed, Dist(), save_checkpoints=True, log=lambda _: None)
    return model, ckpts


@pytest.fixture(scope="module")
def examples(tokenizer, demo_files):
    return [encode_example(tokenizer, e, 64) for e in read_pool([demo_files["pool"]])[:5]]


def test_checkpoints_hold_what_the_gradient_stages_need(tokenizer, examples, tmp_path):
    model, ckpts = _train(tokenizer, examples, tmp_path)
    assert [c.path.name for c in ckpts] == ["epoch-1", "epoch-2"]
    names = list(lora_parameters(model))
    state = ckpts[1].state()
    assert len(state["lrs"]) == 3 and state["global_step"] == 6 and state["adam_betas"] == [0.9, 0.999]
    moments = ckpts[1].moments(names)
    assert moments.exp_avg.numel() == sum(p.numel() for p in lora_parameters(model).values())
    assert moments.exp_avg_sq.min() >= 0 and moments.exp_avg.abs().sum() > 0
    adapter = load_tensors(ckpts[1].adapter / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # trained away from B = 0


def test_resume_after_a_lost_epoch_gives_the_same_adapter(tokenizer, examples, tmp_path):
    _, full = _train(tokenizer, examples, tmp_path / "full")
    _, part = _train(tokenizer, examples, tmp_path / "part")
    shutil.rmtree(part[1].path)  # as if killed during epoch 2
    _, resumed = _train(tokenizer, examples, tmp_path / "part", seed=0)
    a = load_tensors(full[1].adapter / "adapter_model.safetensors")
    b = load_tensors(resumed[1].adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert Checkpoint(tmp_path / "part" / "epoch-2").state()["lrs"] == full[1].state()["lrs"]


def test_run_stopped_mid_epoch_resumes_to_the_same_weights(tokenizer, examples, tmp_path, monkeypatch):
    """With dropout on, a run killed after 4 of its 6 steps restarts from its last resume point
    (step 3, inside epoch 2) and ends with the adapter and moments of an uninterrupted run."""
    settings = TrainSettings(epochs=2, lr=1e-3, batch_size=2, micro_batch_tokens=64, warmup_ratio=0.25, resume_every=1)

    messages = []

    def train(out):
        torch.manual_seed(0)
        model = add_lora(load_model(ModelConfig(device="cpu")), LoraSettings(r=2, alpha=8, dropout=0.1))
        return train_lora(model, examples, settings, out, tokenizer.pad_token_id, 0, Dist(), save_checkpoints=False, log=messages.append)

    full = train(tmp_path / "full")
    real_step, calls = torch.optim.AdamW.step, []

    def failing_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "part")
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    resume = Checkpoint(tmp_path / "part" / "resume")
    assert resume.state()["epoch"] == 1 and len(resume.state()["lrs"]) == 1  # 3 steps of epoch 1, then 1 of epoch 2
    resumed = train(tmp_path / "part")
    assert messages[-1].startswith("resuming epoch 2 after step 1") and not resume.path.exists()
    a, b = (load_tensors(c[-1].adapter / "adapter_model.safetensors") for c in (full, resumed))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    ma, mb = (load_tensors(c[-1].path / "optimizer.safetensors") for c in (full, resumed))
    assert all(torch.allclose(ma[k], mb[k], atol=1e-7) for k in ma)
    assert resumed[-1].state()["lrs"] == full[-1].state()["lrs"]
    assert resumed[-1].state()["losses"] == pytest.approx(full[-1].state()["losses"], rel=1e-5)


def test_linear_schedule():
    lrs = [lr_at(s, 10, 1.0, 0.2) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0] and lrs[-1] == pytest.approx(0.125) and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_bf16_base_trains_float32_adapters_in_mixed_precision(tokenizer, examples, tmp_path):
    """Under a bf16 base model the forward runs in bf16, while the LoRA weights, their gradients
    and AdamW's moments stay float32, and the loss still falls."""
    torch.manual_seed(0)
    model = add_lora(load_model(ModelConfig(device="cpu", dtype="bfloat16")), LoraSettings(r=2, alpha=8, dropout=0.0))
    settings = TrainSettings(epochs=3, lr=2e-3, batch_size=5, micro_batch_tokens=128)
    ckpts = train_lora(model, examples, settings, tmp_path, tokenizer.pad_token_id, 0, Dist(), save_checkpoints=True, log=lambda _: None)
    assert {p.dtype for p in lora_parameters(model).values()} == {torch.float32}
    assert load_tensors(ckpts[-1].path / "optimizer.safetensors")[f"exp_avg.{next(iter(lora_parameters(model)))}"].dtype == torch.float32
    losses = [c.state()["losses"][0] for c in ckpts]
    assert losses[-1] < losses[0]
