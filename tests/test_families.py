"""Every common decoder family against its own forward pass.

Each family's tiny model is built from its transformers config with random weights (no download),
with what sets it apart from Llama switched on and made to bite: sliding windows (5 tokens)
shorter than the sequences, alternating local/global layers, small soft-caps, logit and
attention scales far from 1, fused projections, biases, QK-norm, tied or untied embeddings,
mixture-of-experts blocks. The ground truth is `model(input_ids).logits` of each sequence alone
and plain autograd, one example (or pair) per backward pass; rose's packed and padded log-probs,
the engine's per-example SFT and DPO gradients and the losses must match it to 1e-4 in float32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from own_forward import own_logp

from rose.config import LoraConfig
from rose.encoding import Encoded, collate, pack
from rose.errors import ConfigError
from rose.grads import engine
from rose.grads.losses import DPOLoss, SFTLoss, dpo_losses, response_logprobs, sft_losses
from rose.models import add_lora, lora_parameters
from rose.support import check_model_support

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            initializer_range=0.2)  # large enough weights that soft-caps and scales change the result
LOCAL_GLOBAL = ["sliding_attention", "full_attention"]
MOE = dict(num_experts=4, num_experts_per_tok=2)
QKVO = {"q_proj", "k_proj", "v_proj", "o_proj"}

# family: (config class, settings that make its differences from Llama bite, expected LoRA targets)
FAMILIES = {
    "llama3": ("LlamaConfig", dict(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 16, "rope_theta": 500000.0}), QKVO),
    "mistral": ("MistralConfig", dict(sliding_window=5), QKVO),
    "qwen2": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=5, max_window_layers=1), QKVO),  # q/k/v biases
    "qwen3": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True), QKVO),  # QK-norm, head_dim * heads != hidden
    "gemma2": ("Gemma2Config", dict(sliding_window=5, layer_types=LOCAL_GLOBAL, attn_logit_softcapping=1.0,
                                    final_logit_softcapping=2.0, query_pre_attn_scalar=4, head_dim=16), QKVO),
    "gemma3": ("Gemma3TextConfig", dict(sliding_window=5, layer_types=LOCAL_GLOBAL, final_logit_softcapping=3.0,
                                        query_pre_attn_scalar=4, head_dim=16), QKVO),
    "phi3": ("Phi3Config", dict(sliding_window=5, partial_rotary_factor=0.5, tie_word_embeddings=True), {"qkv_proj", "o_proj"}),
    "olmo2": ("Olmo2Config", {}, QKVO),
    "granite": ("GraniteConfig", dict(logits_scaling=4.0, attention_multiplier=0.3, embedding_multiplier=3.0,
                                      residual_multiplier=0.5, attention_bias=True), QKVO),
    "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.25), {"query_key_value", "dense"}),  # parallel residual, biases, embed_out
    "cohere": ("CohereConfig", dict(logit_scale=0.5, use_qk_norm=True), QKVO),
    "cohere2": ("Cohere2Config", dict(logit_scale=0.5, sliding_window=5, layer_types=LOCAL_GLOBAL), QKVO),
    "qwen2_moe": ("Qwen2MoeConfig", dict(MOE, moe_intermediate_size=16, shared_expert_intermediate_size=16), QKVO),
    "olmoe": ("OlmoeConfig", dict(MOE, clip_qkv=3.0), QKVO),
}
TOL = 1e-4
BETA = 0.5


def tiny_model(config_class: str, settings: dict, seed: int = 0):
    """A random-weight model of the family with LoRA (auto targets) whose B matrices are non-zero."""
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**{**TINY, **settings})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.requires_grad_(False)
    model = add_lora(model, LoraConfig(r=2, alpha=4, dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def random_sequences(lengths: list[tuple[int, int]], seed: int) -> list[Encoded]:
    gen = torch.Generator().manual_seed(seed)
    return [Encoded(tuple(torch.randint(3, TINY["vocab_size"], (n,), generator=gen).tolist()), p) for p, n in lengths]


EXAMPLES = random_sequences([(7, 17), (3, 12), (9, 20), (1, 6)], seed=1)  # longer than the 5-token windows
PAIRS = [(EXAMPLES[0], EXAMPLES[1]), (EXAMPLES[2], EXAMPLES[3])]  # (chosen, rejected)


def engine_grads(batches) -> dict[int, torch.Tensor]:
    """{example index: flat gradient} from the engine's (indices, segments) stream."""
    out = {}
    for idx, segments in batches:
        flat = torch.cat([g.float() for g in segments], dim=1)
        out.update(zip(idx, flat))
    return out


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small run 10x faster on one thread when the cores are busy (the hand-offs
    between threads cost more than their matrix products)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=list(FAMILIES), scope="module")
def family(request):
    config_class, settings, targets = FAMILIES[request.param]
    return request.param, tiny_model(config_class, settings), targets


def test_lora_targets_are_each_familys_attention_projections(family):
    name, model, targets = family
    parts = [n.split(".") for n in lora_parameters(model)]  # ...<attention>.<proj>.lora_A.default.weight
    assert {p[-3] for p in parts} == {"lora_A", "lora_B"} and {p[-4] for p in parts} == targets
    layers = model.get_base_model().config.num_hidden_layers
    assert len(parts) == 2 * len(targets) * layers  # every layer, nothing outside attention


def test_logprobs_gradients_and_losses_match_the_models_own_forward_pass(family):
    """(a) packed and padded response log-probs, (b) per-example SFT and DPO gradients of the
    engine, (c) SFT and DPO losses, against each sequence's own forward pass and autograd."""
    name, model, _ = family
    params = list(lora_parameters(model).values())
    n_response = torch.tensor([len(e) - e.n_prompt for e in EXAMPLES])
    want = [own_logp(model, e) for e in EXAMPLES]  # graphs kept: the SFT and DPO gradients are taken from them
    want_sft = [torch.cat([g.flatten() for g in torch.autograd.grad(-lp / n, params, retain_graph=True)])
                for lp, n in zip(want, n_response)]
    with torch.no_grad(), model.disable_adapter():  # the DPO reference: the base model, adapters off
        reference = torch.tensor([[float(own_logp(model, s)) for s in pair] for pair in PAIRS], dtype=torch.float64)
    margins = [(want[2 * i] - reference[i, 0]) - (want[2 * i + 1] - reference[i, 1]) for i in range(len(PAIRS))]
    want_dpo_loss = [-F.logsigmoid(BETA * m) for m in margins]
    want_dpo = [torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)]) for loss in want_dpo_loss]
    want = torch.stack(want).detach()

    with torch.no_grad():  # (a), (c)
        packed, counts = response_logprobs(model, pack(EXAMPLES))
        padded, _ = response_logprobs(model, collate(EXAMPLES, 0))
    assert counts.tolist() == n_response.tolist()
    assert (packed - want).abs().max() < TOL and (padded - want).abs().max() < TOL, f"{name} log-probs"
    assert (sft_losses(packed, counts) - (-want / n_response)).abs().max() < TOL
    dpo = dpo_losses(packed[0::2], packed[1::2], reference[:, 0], reference[:, 1], BETA)
    assert (dpo - torch.stack(want_dpo_loss).detach()).abs().max() < TOL

    names, cpu = list(lora_parameters(model)), torch.device("cpu")  # (b)
    sft = engine_grads(engine.per_example_grads(model, names, EXAMPLES, SFTLoss(), 40, cpu))  # two packs
    dpo = engine_grads(engine.per_example_grads(model, names, PAIRS, DPOLoss(reference, BETA), 10_000, cpu))
    for i, g in enumerate(want_sft):
        assert relative_error(sft[i], g) < TOL, f"{name} SFT example {i}"
    for i, g in enumerate(want_dpo):
        assert relative_error(dpo[i], g) < TOL, f"{name} DPO pair {i}"


def test_the_support_check_accepts_every_family(family):
    name, model, _ = family
    check_model_support(model, name, max_length=64)


def test_a_model_whose_attention_kernels_disagree_is_refused_before_any_stage():
    """Qwen2-MoE with use_sliding_window applies the window in its eager/SDPA mask but does not pass
    it to the attention function (so transformers' own FlashAttention path ignores it too): the
    packed passes cannot reproduce its forward pass, and the check says so in one line."""
    model = tiny_model("Qwen2MoeConfig", dict(MOE, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                                              use_sliding_window=True, sliding_window=5, max_window_layers=2))
    with pytest.raises(ConfigError, match=r"tiny-qwen2-moe \(Qwen2MoeForCausalLM\) is not supported: .*response log-probs") as e:
        check_model_support(model, "tiny-qwen2-moe", max_length=64)
    assert "\n" not in str(e.value)
    check_model_support(tiny_model("Qwen2MoeConfig", dict(MOE, moe_intermediate_size=16, shared_expert_intermediate_size=16)),
                        "tiny-qwen2-moe", max_length=64)  # the same family without the window is fine


def test_the_pipeline_refuses_such_a_model_before_it_writes_anything(tmp_path, demo_files, tokenizer):
    """Loaded by name as a user would (a model folder with its tokenizer), the model is refused by
    `rose run` in one line before the warm-up, and the run directory is never created."""
    from conftest import tiny_config

    from rose.pipeline import run_stages

    torch.manual_seed(0)
    config = transformers.Qwen2MoeConfig(**{**TINY, **MOE, "vocab_size": len(tokenizer)}, moe_intermediate_size=16,
                                         shared_expert_intermediate_size=16, use_sliding_window=True, sliding_window=5, max_window_layers=2)
    folder = tmp_path / "tiny-qwen2-moe"
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"tiny-qwen2-moe \(Qwen2MoeForCausalLM\) is not supported"):
        run_stages(tiny_config(run_dir, demo_files, **{"model.name": str(folder), "model.device": "cpu"}))
    assert not run_dir.exists()


@pytest.fixture(params=["fresh", "trained"])
def gemma3_bf16(request):
    """The tiny Gemma 3 in bfloat16 (weights and adapters, as the gradient stages run it on a GPU),
    with fresh adapters (B = 0, as every run's check meets them) or trained ones."""
    from rose.models import set_adapter_dtype

    config_class, settings, _ = FAMILIES["gemma3"]
    model = tiny_model(config_class, settings)
    if request.param == "fresh":
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.zeros_(p)
    model.get_base_model().to(torch.bfloat16)
    set_adapter_dtype(model, torch.bfloat16)
    return model


def test_in_bfloat16_rose_is_held_to_a_float32_reference_and_passes_as_the_models_own_forward_does(gemma3_bf16):
    from rose.support import measure_support, probe_sequences

    before = {k: v.clone() for k, v in gemma3_bf16.state_dict().items()}
    report = measure_support(gemma3_bf16, probe_sequences(gemma3_bf16, 64))
    assert report.reference_dtype == torch.float32 and report.dtype == torch.bfloat16
    assert report.own.logprob > 1e-4 and report.own.gradient > 1e-4  # the reference is not the bf16 forward itself
    assert report.rose.logprob <= report.limit("logprob") and report.rose.gradient <= report.limit("gradient")
    after = gemma3_bf16.state_dict()  # cast to float32 for the reference and back: the same bits, the same dtypes
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    check_model_support(gemma3_bf16, "tiny-gemma3-bf16", max_length=64)


def test_in_bfloat16_a_soft_cap_left_out_is_still_refused(gemma3_bf16, monkeypatch):
    """Without the final soft-cap, rose's log-probs are 0.2 nats per token from float32 where the
    model's own bf16 forward is 0.005 away: refused, with both numbers in the message."""
    from rose.grads.losses import LogitFinish

    monkeypatch.setattr(LogitFinish, "of", classmethod(lambda cls, config: cls()))
    with pytest.raises(ConfigError, match=r"in bfloat16 disagree with the model's own forward pass in float32: response log-probs "
                                          r"\(nats per token\) differ by [0-9.e-]+ \(the model's own bfloat16 forward: [0-9.e-]+; limit"):
        check_model_support(gemma3_bf16, "tiny-gemma3-bf16", max_length=64)
