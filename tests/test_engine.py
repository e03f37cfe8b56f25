"""The batched engine gives the per-example gradients of plain autograd (SFT and DPO), one example at a time."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import lora_model
from float64_model import truly_float64
from own_forward import own_logp
from torch.utils._python_dispatch import TorchDispatchMode

from rose.encoding import Encoded, collate, encode, pack
from rose.formats import Origin
from rose.grads import engine, oracle
from rose.grads.losses import DPOLoss, SFTLoss, response_logprobs
from rose.models import lora_parameters

QUESTIONS = [
    ("What is 2 plus 2?", "4."),
    ("Name three fruits.", "Apple, pear and a rather long list of other fruits such as plums."),
    ("Translate 'chat' from French.", "Cat."),
    ("Write one sentence about the sea at night, please, with some detail about the waves.", "The dark sea hums."),
    ("Hi", "Hello! How can I help you today?"),
]


def _examples(tokenizer):
    return [encode(tokenizer, ({"role": "user", "content": q},), a, 96, Origin("t")) for q, a in QUESTIONS]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())


def _float64_copy(model):
    """The same weights in float64 (truly: `float64_model`): the reference for a float32 engine is
    exact autograd, not float32 autograd, whose own rounding shows most on examples the model
    already predicts well (a gradient that is a difference of near-equal terms)."""
    return truly_float64(copy.deepcopy(model).double())


def _lora_model(dtype: str):
    """`lora_model`, made truly float64 when it is float64, so float64 tolerances hold on any CPU."""
    model = lora_model(dtype)
    return truly_float64(model) if dtype == "float64" else model


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_sft_per_example_grads_match_autograd(tokenizer, dtype, tol):
    model = _lora_model(dtype)
    params = lora_parameters(model)
    examples = _examples(tokenizer)
    assert len({len(e) for e in examples}) >= 3  # mixed lengths -> padding inside the batch
    exact = _float64_copy(model)
    expected = torch.stack(list(oracle.sft_grads(exact, list(lora_parameters(exact).values()), examples, tokenizer.pad_token_id)))
    got = torch.zeros_like(expected)
    batches = 0
    for idx, parts in engine.per_example_grads(model, list(params), examples, SFTLoss(), 10_000, torch.device("cpu")):
        got[idx] = torch.cat(list(parts), dim=1).to(got.dtype)
        batches += 1
    assert batches == 1 and expected.shape == (5, sum(p.numel() for p in params.values()))
    assert _rel_err(got, expected) < tol


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_dpo_pair_grads_match_autograd(tokenizer, dtype, tol):
    """The engine's per-pair DPO gradients against a reference that shares no code with rose's
    losses: each sequence's log-prob from the model's own forward pass, the DPO loss written out
    here, -log sigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r))), and plain autograd, one pair at
    a time (the oracle, which calls rose's `dpo_losses`, must agree with it too)."""
    beta = 0.1
    model = _lora_model(dtype)
    params = lora_parameters(model)
    ex = _examples(tokenizer)
    pairs = [(ex[0], ex[1]), (ex[2], ex[3]), (ex[4], ex[1])]
    with model.disable_adapter():
        ref, _ = engine.sequence_logprobs(model, [s for p in pairs for s in p], 10_000, torch.device("cpu"))
    ref = ref.view(-1, 2)
    exact = _float64_copy(model)
    exact_params = list(lora_parameters(exact).values())
    expected = []
    for (chosen, rejected), (ref_c, ref_r) in zip(pairs, ref.double()):
        lp_c, lp_r = own_logp(exact, chosen), own_logp(exact, rejected)
        margin = (lp_c - ref_c) - (lp_r - ref_r)
        loss = -F.logsigmoid(beta * margin)
        expected.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, exact_params)]))
    expected = torch.stack(expected)
    via_oracle = torch.stack(list(oracle.dpo_grads(exact, exact_params, pairs, ref, beta, tokenizer.pad_token_id)))
    got = torch.zeros_like(expected)
    for idx, parts in engine.per_example_grads(model, list(params), pairs, DPOLoss(ref, beta), 10_000, torch.device("cpu")):
        got[idx] = torch.cat(list(parts), dim=1).to(got.dtype)
    assert expected.norm(dim=1).min() > 0
    assert _rel_err(got, expected) < tol
    assert _rel_err(via_oracle, expected) < 1e-10


@pytest.mark.slow
def test_dpo_direction_survives_a_margin_whose_sigmoid_underflows(tokenizer):
    """A pair the policy ranks right by ~1,500 nats more than the reference: sigma(-beta m) ~ 1e-65
    underflows in float32, so the plain DPO gradient is exactly zero, though in exact arithmetic it
    is a tiny vector with a direction. `DPOLoss(direction=True)`, what val-grads uses, gives that
    direction for it and for an ordinary pair: the float64 model's own autograd of the plain DPO
    loss, normalised, is the reference."""
    beta, cpu = 0.1, torch.device("cpu")
    model = _lora_model("float32")
    params = list(lora_parameters(model))
    ex = _examples(tokenizer)
    pairs = [(ex[0], ex[1]), (ex[2], ex[3])]
    with model.disable_adapter():
        ref, _ = engine.sequence_logprobs(model, [s for p in pairs for s in p], 10_000, cpu)
    ref = ref.view(-1, 2).clone()
    ref[0, 0] -= 1500.0  # the first pair's margin grows by 1,500 nats; the second stays as it is
    exact = _float64_copy(model)
    exact_params = list(lora_parameters(exact).values())
    expected = []
    for (chosen, rejected), (ref_c, ref_r) in zip(pairs, ref.double()):
        margin = (own_logp(exact, chosen) - ref_c) - (own_logp(exact, rejected) - ref_r)
        expected.append(torch.cat([g.flatten() for g in torch.autograd.grad(-F.logsigmoid(beta * margin), exact_params)]))
    expected = torch.stack(expected)

    def grads(loss):
        out = torch.zeros_like(expected)
        for idx, parts in engine.per_example_grads(model, params, pairs, loss, 10_000, cpu):
            out[idx] = torch.cat(list(parts), dim=1).double()
        return out

    assert 0 < expected[0].norm() < 1e-50  # real, and far below float32's smallest number
    assert grads(DPOLoss(ref, beta))[0].abs().max() == 0  # the plain loss underflows to an all-zero feature
    got = grads(DPOLoss(ref, beta, direction=True))
    unit = expected / expected.norm(dim=1, keepdim=True)  # not F.normalize, whose eps leaves a 1e-65 vector as it is
    assert _rel_err(got / got.norm(dim=1, keepdim=True), unit) < 1e-4


@pytest.mark.slow
def test_small_token_budget_splits_batches_without_changing_results(tokenizer):
    model = _lora_model("float64")
    names = list(lora_parameters(model))
    examples = _examples(tokenizer)
    flat = lambda batches: [(idx, torch.cat(list(p), dim=1)) for idx, p in batches]
    (idx, g_all), = flat(engine.per_example_grads(model, names, examples, SFTLoss(), 10_000, torch.device("cpu")))
    singles = flat(engine.per_example_grads(model, names, examples, SFTLoss(), 60, torch.device("cpu")))
    assert len(singles) == len(examples)  # a budget of 60 tokens fits one example per batch
    for idx_one, g in singles:
        assert torch.allclose(g[0], g_all[idx.index(idx_one[0])], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_response_logprobs_match_the_models_own_logits(tokenizer, layout):
    """Gathering response positions before the LM head gives the log-probs of a full forward pass
    of each example alone, whether the batch is padded or packed (attention stays inside each
    packed sequence)."""
    model = _lora_model("float64")
    examples = _examples(tokenizer)
    batch = collate(examples, tokenizer.pad_token_id) if layout == "padded" else pack(examples)
    logp, counts = response_logprobs(model, batch)
    for i, e in enumerate(examples):
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0], -1)
        want = sum(float(full[t, e.input_ids[t + 1]]) for t in range(e.n_prompt - 1, len(e) - 1))
        assert counts[i] == len(e) - e.n_prompt
        assert abs(float(logp[i]) - want) < 1e-8 * max(1.0, abs(want))


@pytest.mark.parametrize("dtype,width", [(torch.float32, 8), (torch.float64, 8), (torch.float32, 3)])
def test_per_sequence_products_sum_each_sequences_tokens(dtype, width):
    """Both routes (the grouped GEMM for aligned float32 rows, the loop for float64 or odd widths)
    give each sequence's own sum of outer products, whatever the sequence lengths."""
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 1, 17, 9]
    dy, x = torch.randn(sum(lengths), 12, generator=gen, dtype=dtype), torch.randn(sum(lengths), width, generator=gen, dtype=dtype)
    ends = torch.tensor(lengths).cumsum(0).to(torch.int32)
    got = engine.per_sequence_products(dy, x, ends)
    start = 0
    for b, n in enumerate(lengths):
        want = dy[start : start + n].t() @ x[start : start + n]
        assert torch.allclose(got[b], want, rtol=1e-6, atol=1e-6)
        start += n


def test_compiled_blocks_and_rotary_embedding_leave_per_example_grads_unchanged(monkeypatch):
    """Compiling the norms, MLPs and RoPE (as the gradient stages do on a GPU) keeps the LoRA layers
    visible to the engine's hooks: the same per-example gradients, on a small random Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    from rose.config import LoraConfig
    from rose.models import add_lora, compile_lora_free_blocks, compile_rotary_embedding, eager_rotary_embedding

    eager_rope = modeling_llama.apply_rotary_pos_emb
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", eager_rope)  # restored after the test: the patch is process-wide

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256)
    model = add_lora(LlamaForCausalLM(config), LoraConfig(r=4, alpha=16, dropout=0.0)).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    names = list(lora_parameters(model))
    gen = torch.Generator().manual_seed(1)
    examples = [Encoded(tuple(torch.randint(0, 128, (n,), generator=gen).tolist()), p) for n, p in [(9, 3), (17, 5), (30, 12)]]

    def grads():
        (idx, g), = [(idx, torch.cat(list(parts), dim=1)) for idx, parts in engine.per_example_grads(model, names, examples, SFTLoss(), 1000, torch.device("cpu"))]
        return g[torch.argsort(torch.tensor(idx))]

    eager = grads()
    assert compile_lora_free_blocks(model) == 2 * 3 + 1  # per layer: two norms and the MLP; the final norm
    assert compile_lora_free_blocks(model) == 0  # already compiled
    assert compile_rotary_embedding(model) == 1
    assert compile_rotary_embedding(model) == 0
    assert modeling_llama.apply_rotary_pos_emb is not eager_rope  # the global LlamaAttention.forward looks up at each call
    assert _rel_err(grads(), eager) < 1e-5
    assert eager_rotary_embedding(model) == 1 and modeling_llama.apply_rotary_pos_emb is eager_rope


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _tiny_lora_llama(registration: list[str] | None = None, share_attention: bool = False):
    """A 2-layer random float64 Llama (made truly float64) with rank-4 LoRA on q/k/v/o and non-zero
    B matrices. `registration` re-registers each attention block's projections in that order (the
    parameter order), which leaves the order its forward calls them in (q, k, v, o) unchanged;
    `share_attention` makes both layers use layer 0's attention block (weight sharing)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rose.config import LoraConfig
    from rose.models import add_lora

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256)
    base = LlamaForCausalLM(config).double()
    for layer in base.model.layers:
        if registration:
            layer.self_attn._modules = {name: layer.self_attn._modules[name] for name in registration}
        if share_attention:
            layer.self_attn = base.model.layers[0].self_attn
    model = add_lora(base, LoraConfig(r=4, alpha=16, dropout=0.0, target_modules=ATTENTION)).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return truly_float64(model)


def _random_examples(seed: int = 1) -> list[Encoded]:
    gen = torch.Generator().manual_seed(seed)
    return [Encoded(tuple(torch.randint(0, 128, (n,), generator=gen).tolist()), p) for n, p in [(9, 3), (17, 5), (30, 12)]]


def _call_order(model, names: list[str], example: Encoded) -> list[str]:
    """The LoRA parameters in the order the model's forward pass calls their modules."""
    modules = dict(model.named_modules())
    order: list[str] = []
    handles = [modules[n.removesuffix(".weight")].register_forward_hook(lambda *_, n=n: order.append(n)) for n in names]
    with torch.no_grad():
        model(input_ids=torch.tensor([example.input_ids]))
    for h in handles:
        h.remove()
    return order


def test_per_example_grads_are_keyed_by_parameter_name_not_call_order():
    """A model that registers o/v before q/k but calls q, k, v, o: every example's gradient of every
    LoRA weight, by name, is plain autograd's (the engine once paired layers in call order with
    names in parameter order, which put q's gradient under o's name)."""
    model = _tiny_lora_llama(registration=["o_proj", "v_proj", "k_proj", "q_proj"])
    params = lora_parameters(model)
    names = list(params)
    examples = _random_examples()
    calls = _call_order(model, names, examples[0])
    assert sorted(calls) == sorted(names) and calls != names  # the premise: call order is not parameter order
    expected = torch.stack(list(oracle.sft_grads(model, list(params.values()), examples, 0)))
    got = torch.zeros_like(expected)
    for idx, parts in engine.per_example_grads(model, names, examples, SFTLoss(), 1000, torch.device("cpu")):
        assert len(idx) == len(examples)  # one pack: every example's gradient from one pass
        got[idx] = torch.cat([g.reshape(len(idx), -1) for g in parts], dim=1)
    sizes = [p.numel() for p in params.values()]
    for name, g, want in zip(names, got.split(sizes, dim=1), expected.split(sizes, dim=1)):
        assert want.norm(dim=1).min() > 0, name
        assert _rel_err(g, want) < 1e-10, name


def test_a_lora_layer_called_twice_in_one_pass_is_an_error():
    """Shared weights would need the sum over both calls; the engine refuses rather than mix them."""
    model = _tiny_lora_llama(share_attention=True)
    names = list(lora_parameters(model))
    assert len(names) == 8 and len(_call_order(model, names, _random_examples()[0])) == 16
    with pytest.raises(RuntimeError, match="twice in one forward pass"):
        for _, parts in engine.per_example_grads(model, names, _random_examples(), SFTLoss(), 1000, torch.device("cpu")):
            list(parts)


class _LowPrecisionOps(TorchDispatchMode):
    """Records every op (forward and backward) that returns a floating tensor narrower than float64."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, torch.dtype] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
                self.seen.setdefault(str(func), t.dtype)
        return out


def test_float64_passes_never_round_to_lower_precision():
    """On a float64 model, log-probs (padded and packed), SFT and DPO gradient passes and reference
    log-probs run every op in float64: nothing of ours casts to float32 on the way."""
    model = _tiny_lora_llama()
    names = list(lora_parameters(model))
    ex = _random_examples()
    cpu = torch.device("cpu")
    with _LowPrecisionOps() as ops:
        response_logprobs(model, collate(ex, 0))
        response_logprobs(model, pack(ex))
        for _, parts in engine.per_example_grads(model, names, ex, SFTLoss(), 1000, cpu):
            list(parts)
        with model.disable_adapter():
            ref, _ = engine.sequence_logprobs(model, [ex[0], ex[1], ex[2], ex[1]], 1000, cpu)
        for _, parts in engine.per_example_grads(model, names, [(ex[0], ex[1]), (ex[2], ex[1])], DPOLoss(ref.view(-1, 2), 0.1), 1000, cpu):
            list(parts)
    assert ops.seen == {}
