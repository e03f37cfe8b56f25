"""LoRA training: checkpoints hold adapter, AdamW moments by name and lrs; a resumed run is identical.

The loop does not depend on what the model knows, so these tests train a tiny random Llama
(`conftest.tiny_llama`) on real encoded demo examples rather than SmolLM2."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import tiny_llama
from peft import get_peft_model_state_dict

from rose.config import LoraConfig, TrainConfig
from rose.distributed import Dist
from rose.encoding import encode_example
from rose.formats import read_pool
from rose.models import add_lora, lora_parameters
from rose.store import load_tensors
from rose.train import Checkpoint, lr_at, train_lora

SETTINGS = TrainConfig(epochs=2, lr=1e-3, batch_size=2, micro_batch_tokens=64, warmup_ratio=0.25)


def _lora_llama(tokenizer, dtype=torch.float32, dropout=0.0):
    """A fresh tiny Llama with rank-2 adapters; the same weights every call."""
    return add_lora(tiny_llama(len(tokenizer), dtype), LoraConfig(r=2, alpha=8, dropout=dropout))


def _train(tokenizer, examples, out, seed=0):
    model = _lora_llama(tokenizer)
    ckpts = train_lora(model, examples, SETTINGS, out, tokenizer.pad_token_id, seed, Dist(), save_checkpoints=True, log=lambda _: None)
    return model, ckpts


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def examples(tokenizer, demo_files):
    return [encode_example(tokenizer, e, 64) for e in read_pool([demo_files["pool"]])[:5]]


def test_checkpoints_hold_what_the_gradient_stages_need(tokenizer, examples, tmp_path):
    model, ckpts = _train(tokenizer, examples, tmp_path)
    assert [c.path.name for c in ckpts] == ["epoch-1", "epoch-2"]
    names = list(lora_parameters(model))
    state = ckpts[1].state()
    assert state["global_step"] == 6 and state["adam_betas"] == [0.9, 0.999]
    assert state["lrs"] == [lr_at(s, 6, SETTINGS.lr, SETTINGS.warmup_ratio) for s in range(3, 6)]  # epoch 2's steps
    saved = load_tensors(ckpts[1].path / "optimizer.safetensors")
    assert all(saved[f"step.{n}"].item() == 6 for n in names)
    # moments come back flattened in the order of the names asked for, whatever order they were saved in
    order = names[::-1]
    moments = ckpts[1].moments(order)
    assert torch.equal(moments.exp_avg, torch.cat([saved[f"exp_avg.{n}"].flatten() for n in order]))
    assert torch.equal(moments.exp_avg_sq, torch.cat([saved[f"exp_avg_sq.{n}"].flatten() for n in order]))
    assert moments.exp_avg.abs().sum() > 0
    # the last checkpoint's adapter is the trained model's, and training moved B away from its zero start
    adapter = load_tensors(ckpts[1].adapter / "adapter_model.safetensors")
    live = get_peft_model_state_dict(model)
    assert adapter.keys() == live.keys() and all(torch.equal(adapter[k], live[k]) for k in adapter)
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


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
    settings = TrainConfig(epochs=2, lr=1e-3, batch_size=2, micro_batch_tokens=64, warmup_ratio=0.25, resume_every=1)

    messages = []

    def train(out):
        model = _lora_llama(tokenizer, dropout=0.1)
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
    and AdamW's moments stay float32, and the loss falls as it does in float32 training."""
    settings = TrainConfig(epochs=6, lr=5e-2, batch_size=5, micro_batch_tokens=128)  # one step per epoch

    def losses(model, out) -> list[float]:
        """The loss before each step (the first of each epoch)."""
        ckpts = train_lora(model, examples, settings, out, tokenizer.pad_token_id, 0, Dist(), save_checkpoints=True, log=lambda _: None)
        return [c.state()["losses"][0] for c in ckpts]

    model = _lora_llama(tokenizer, torch.bfloat16)
    params = lora_parameters(model)
    base = model.get_base_model()
    forward_dtypes, grad_dtypes = set(), set()
    for layer in base.model.layers:  # the base model's own (adapter-free) linears
        layer.mlp.down_proj.register_forward_hook(lambda module, args, out: forward_dtypes.add(out.dtype))
    for p in params.values():
        p.register_hook(lambda grad: grad_dtypes.add(grad.dtype))
    mixed = losses(model, tmp_path / "bf16")
    assert forward_dtypes == {torch.bfloat16} and grad_dtypes == {torch.float32}
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert {p.dtype for n, p in base.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    moments = load_tensors(tmp_path / "bf16" / "epoch-6" / "optimizer.safetensors")
    assert {moments[f"{kind}.{n}"].dtype for n in params for kind in ("exp_avg", "exp_avg_sq")} == {torch.float32}
    # the same model and steps in float32: the loss falls by about 0.14 in both (the 32-wide random
    # model learns slowly), and bf16's rounding moves it by about 0.01
    full = losses(_lora_llama(tokenizer, torch.float32), tmp_path / "fp32")
    assert full[-1] < full[0] - 0.07 and mixed[-1] < mixed[0] - 0.07, (full, mixed)
    assert mixed == pytest.approx(full, abs=0.05)


def test_packed_and_padded_micro_batches_give_the_same_step(tokenizer, examples):
    """Training packs micro-batches on a GPU and pads them on a CPU: the same loss and the same
    LoRA gradients either way (checked here on the CPU, where both layouts run)."""
    from rose.grads.losses import ResponseLogprobs
    from rose.train import _accumulate

    model = _lora_llama(tokenizer)
    params = lora_parameters(model)
    for p in params.values():
        torch.nn.init.normal_(p, std=0.05)
    results = []
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        loss = _accumulate(ResponseLogprobs(model), examples, examples[0], 64, len(examples), tokenizer.pad_token_id,
                           torch.device("cpu"), None, packed=packed)
        results.append((float(loss), torch.cat([p.grad.flatten() for p in params.values()])))
    (padded_loss, padded_grad), (packed_loss, packed_grad) = results
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    assert torch.allclose(packed_grad, padded_grad, rtol=1e-4, atol=1e-7) and padded_grad.abs().sum() > 0
