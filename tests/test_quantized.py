"""4-bit base weights (bitsandbytes NF4, QLoRA-style): LoRA on top, gradients w.r.t. the adapters in
float32, checked against the quantized model's own forward pass and plain autograd, on the CPU."""

from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install rose-select[quant])")

from rose.config import LoraConfig, ModelConfig, TrainConfig  # noqa: E402
from rose.distributed import Dist  # noqa: E402
from rose.encoding import Encoded, collate  # noqa: E402
from rose.grads import engine, oracle  # noqa: E402
from rose.grads.losses import SFTLoss, response_logprobs, sft_losses  # noqa: E402
from rose.models import add_lora, load_model, lora_parameters  # noqa: E402
from rose.support import check_model_support  # noqa: E402
from rose.train import train_lora  # noqa: E402

NF4 = {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                               "bnb_4bit_compute_dtype": "float32"}}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A tiny random Llama saved as a model folder, loaded through rose with 4-bit weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("nf4")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(folder)
    word = Tokenizer(models.WordLevel({f"w{i}": i for i in range(96)}, unk_token="w0"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word, eos_token="w1", pad_token="w2").save_pretrained(folder)
    torch.manual_seed(1)
    model = add_lora(load_model(ModelConfig(name=str(folder), device="cpu", kwargs=NF4)), LoraConfig(r=4, alpha=16, dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def _examples(seed: int = 0) -> list[Encoded]:
    gen = torch.Generator().manual_seed(seed)
    return [Encoded(tuple(torch.randint(0, 96, (n,), generator=gen).tolist()), p) for n, p in [(12, 4), (20, 9), (7, 3)]]


def test_base_weights_are_4bit_and_only_the_adapters_train(quantized):
    linears = [m for name, m in quantized.named_modules() if name.endswith("mlp.down_proj")]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    assert {p.dtype for p in lora_parameters(quantized).values()} == {torch.float32}
    assert not any(p.requires_grad for n, p in quantized.named_parameters() if "lora_" not in n)


def test_per_example_adapter_gradients_match_autograd_on_the_4bit_model(quantized):
    names, params = zip(*lora_parameters(quantized).items())
    examples = _examples()
    want = torch.stack(list(oracle.sft_grads(quantized, list(params), examples, 2)))
    got = torch.zeros_like(want)
    for idx, parts in engine.per_example_grads(quantized, list(names), examples, SFTLoss(), 1000, torch.device("cpu")):
        got[idx] = torch.cat(list(parts), dim=1)
    assert want.norm(dim=1).min() > 0
    assert float(((got - want).norm(dim=1) / want.norm(dim=1)).max()) < 1e-4
    check_model_support(quantized, "tiny-nf4", 64)  # the check every run makes before its first stage


def _mean_loss(model, examples: list[Encoded]) -> float:
    """The training loss (mean over examples of each one's mean response-token NLL) on a fixed set."""
    with torch.no_grad():
        return float(sft_losses(*response_logprobs(model, collate(examples, 2))).mean())


def test_a_4bit_base_trains_its_adapters(quantized, tmp_path):
    """Eight steps lower the loss on the very examples they trained on, measured on the same set
    before and after (two different shuffled batches differ by more than a few steps move it)."""
    examples = _examples(1)
    before = _mean_loss(quantized, examples)
    # every step is over the whole set (one step per epoch), so each step's logged loss is the same set's
    settings = TrainConfig(epochs=8, lr=1e-2, batch_size=len(examples), micro_batch_tokens=64, warmup_ratio=0.0)
    ckpts = train_lora(quantized, examples, settings, tmp_path, 2, 0, Dist(), save_checkpoints=True, log=lambda _: None)
    after = _mean_loss(quantized, examples)
    losses = [c.state()["losses"] for c in ckpts]
    assert [len(x) for x in losses] == [1] * 8 and losses[0][0] == pytest.approx(before, rel=1e-5)
    # from 4.57 to about 4.37 before the last step and 4.36 after it (with lr 0 it would not move at all)
    assert losses[-1][-1] < 0.97 * losses[0][0], losses
    assert after < 0.97 * before, (before, after)
    quantized.eval()
