"""Packed attention with sliding windows on the device: FlashAttention's varlen kernel against the
per-sequence path, and rose's packed log-probs and gradients against the model's own forward pass.

    python benchmarks/packed_attention_check.py --out docs/benchmarks/packed_attention_check.json

Prints two tables and writes JSON (max differences; nothing is timed).

kernel   random q/k/v of one packed row (grouped-query heads; sequences longer and shorter than the
         window) through `grads.attention`'s two paths: `_flash` (torch's varlen FlashAttention with
         window_size=(W - 1, 0), or plain causal for a global layer) and `_per_sequence` (SDPA with an
         explicit window mask), both in the model dtype, each also against `_per_sequence` in float32
         (the exact answer); the output and the gradients of q, k and v.
models   random-weight Mistral-style (every layer windowed), Gemma-3-style (local layers with a window,
         a global one; QK-norm, scaled embeddings, final logit soft-cap) and Gemma-2-style (attention
         soft-cap: explicit scores, so the per-sequence path even on a GPU) decoders with LoRA:
         rose's packed response log-probs against the model's own forward pass on each sequence
         alone, in the model dtype and in float32, next to the model's own bf16-vs-float32
         difference (the precision floor); and `support.measure_support`, the check that runs before
         every pipeline, against float32, with the limit it is held to (from the model's own error).
On a CPU (no CUDA) everything runs smaller in float32 and the FlashAttention rows say n/a.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import platform
from pathlib import Path

import torch
import transformers

from rose.config import LoraConfig
from rose.encoding import Encoded, pack
from rose.grads import attention
from rose.grads.losses import response_logprobs
from rose.models import add_lora
from rose.support import measure_support, probe_sequences

SIZES = {  # (hidden, layers, heads, kv heads, head dim, vocab, window, sequence lengths)
    "gpu": dict(hidden=1024, layers=4, heads=8, kv_heads=2, head_dim=128, vocab=32000, window=256, lengths=[1500, 700, 257, 40]),
    "cpu": dict(hidden=64, layers=4, heads=4, kv_heads=2, head_dim=16, vocab=512, window=16, lengths=[90, 40, 17, 6]),
}


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def kernel_rows(size: dict, device: torch.device, dtype: torch.dtype) -> tuple[list[dict], dict]:
    """Both attention paths on one packed row, per window (None = a global layer); and the flash
    output's distance from the exact windows W - 1, W and W + 1 (the least must be at W)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    lengths, h, hk, d = size["lengths"], size["heads"], size["kv_heads"], size["head_dim"]
    t = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(t, heads, d, generator=gen).to(device) for heads in (h, hk, hk))
    grad_out = torch.randn(t, h, d, generator=gen).to(device)
    scale = d ** -0.5
    flash_ok = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and attention._varlen_kernel() is not None

    def run(path, cast):
        """(output, grads of q, k, v) of one path with q, k, v cast to `cast`; None where the path is not taken."""
        leaves = [x.to(cast).requires_grad_() for x in (q, k, v)]
        out = path(*leaves)
        if out is None:
            return None
        grads = torch.autograd.grad((out.float() * grad_out).sum(), leaves)
        return out.detach(), grads

    rows, offsets = [], {}
    for window in (size["window"], None):
        per_seq = functools.partial(attention._per_sequence, cu_seq_lens=cu, scale=scale, window=window, softcap=None)
        flash = functools.partial(attention._flash, cu_seq_lens=cu, max_length=max(lengths), scale=scale, window=window)
        exact, ours = run(per_seq, torch.float32), run(per_seq, dtype)
        fast = run(flash, dtype) if flash_ok else None
        if fast is not None and window:  # which window the kernel really applied: W, not W - 1 or W + 1
            offsets[window] = {w: _max(fast[0], attention._per_sequence(q, k, v, cu, scale, w, None))
                               for w in (window - 1, window, window + 1)}
        for name, got, want in (("flash vs per-sequence", fast, ours), ("flash vs float32", fast, exact),
                                ("per-sequence vs float32", ours, exact)):
            row = {"window": window or "global", "compare": name, "dtype": str(dtype).removeprefix("torch.")}
            if got is None or want is None:
                row.update(output=None, grad_q=None, grad_k=None, grad_v=None,
                           note="n/a: no FlashAttention path here (CPU, float32, or this torch's kernel lacks window_size)")
            else:
                row.update(output=_max(got[0], want[0]), **{f"grad_{n}": _max(g, w) for n, g, w in zip("qkv", got[1], want[1])})
            rows.append(row)
    return rows, offsets


def tiny_decoders(size: dict) -> dict[str, transformers.PretrainedConfig]:
    common = dict(vocab_size=size["vocab"], hidden_size=size["hidden"], intermediate_size=size["hidden"] * 2,
                  num_hidden_layers=size["layers"], num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"],
                  head_dim=size["head_dim"], max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    local_global = ["sliding_attention"] * (size["layers"] - 1) + ["full_attention"]
    return {
        "mistral-style": transformers.MistralConfig(**common, sliding_window=size["window"]),
        "gemma3-style": transformers.Gemma3TextConfig(**common, sliding_window=size["window"], layer_types=local_global,
                                                      final_logit_softcapping=30.0, query_pre_attn_scalar=size["head_dim"]),
        "gemma2-style": transformers.Gemma2Config(**common, sliding_window=size["window"], layer_types=local_global,
                                                  attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                                  query_pre_attn_scalar=size["head_dim"]),
    }


def own_logps(model, seqs: list[Encoded], device: torch.device) -> torch.Tensor:
    """Summed response log-probs from the model's own forward pass, one sequence at a time."""
    out = []
    for s in seqs:
        ids = torch.tensor([s.input_ids], device=device)
        logits = model(input_ids=ids, use_cache=False).logits[0, s.n_prompt - 1 : -1].float()
        out.append(torch.log_softmax(logits, -1).gather(1, ids[0, s.n_prompt :, None]).sum())
    return torch.stack(out).double().cpu()


@torch.no_grad()
def model_rows(size: dict, device: torch.device, dtype: torch.dtype) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    seqs = [Encoded(tuple(torch.randint(3, size["vocab"], (n,), generator=gen).tolist()), max(1, n // 4)) for n in size["lengths"]]
    n_tokens = torch.tensor([len(s) - s.n_prompt for s in seqs], dtype=torch.float64)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in pack(seqs).items()}
    rows = []
    for name, config in tiny_decoders(size).items():
        torch.manual_seed(0)
        base = transformers.AutoModelForCausalLM.from_config(config).eval()
        model = add_lora(base, LoraConfig(r=16, alpha=32, dropout=0.0))
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                torch.nn.init.normal_(p, std=0.02)
        exact = copy.deepcopy(model).to(device, torch.float32).eval()
        model = model.to(device, dtype).eval()
        own, own_exact = own_logps(model, seqs, device), own_logps(exact, seqs, device)
        packed = response_logprobs(model, batch)[0].double().cpu()
        packed_exact = response_logprobs(exact, batch)[0].double().cpu()
        windowed = config.sliding_window < max(size["lengths"])
        path = ("flash" if device.type == "cuda" and dtype != torch.float32 and not getattr(config, "attn_logit_softcapping", None)
                and attention._varlen_kernel() is not None and "window_size" in attention._varlen_kernel()[1] else "per-sequence")
        per_token = lambda a, b: float(((a - b).abs() / n_tokens).max())  # noqa: E731
        with torch.enable_grad():
            support = measure_support(model, probe_sequences(model, max_length=max(size["lengths"])))
        rows.append({
            "model": name, "dtype": str(dtype).removeprefix("torch."), "packed_path": path, "window_binds": windowed,
            "packed_vs_own_nats": float((packed - own).abs().max()), "packed_vs_own_nats_per_token": per_token(packed, own),
            "own_vs_own_float32_nats_per_token": per_token(own, own_exact),
            "packed_vs_own_float32_nats_per_token": per_token(packed_exact, own_exact),
            "support_logprob": support.rose.logprob, "support_logprob_limit": support.limit("logprob"),
            "support_gradient": support.rose.gradient, "support_gradient_limit": support.limit("gradient"),
        })
    return rows


def _table(rows: list[dict], keys: list[str]) -> str:
    def cell(v):
        return "n/a" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = SIZES["gpu" if device.type == "cuda" else "cpu"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kernel = attention._varlen_kernel()
    kernel_table, window_offsets = kernel_rows(size, device, dtype)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "varlen_keywords": sorted(kernel[1]) if kernel else None, "size": size,
        "kernel": kernel_table, "flash_window_offsets": window_offsets, "models": model_rows(size, device, dtype),
    }
    print(f"{result['device']}, torch {result['torch']}, window {size['window']}, lengths {size['lengths']}")
    print(_table(result["kernel"], ["window", "compare", "dtype", "output", "grad_q", "grad_k", "grad_v"]))
    for window, errors in window_offsets.items():
        print(f"flash output vs exact window W-1/W/W+1 (W={window}): " + " / ".join(f"{e:.3g}" for e in errors.values())
              + ("  ok: W" if min(errors, key=errors.get) == window else "  WRONG WINDOW"))
    print()
    print(_table(result["models"], ["model", "dtype", "packed_path", "packed_vs_own_nats_per_token", "own_vs_own_float32_nats_per_token",
                                    "packed_vs_own_float32_nats_per_token", "support_logprob", "support_logprob_limit", "support_gradient",
                                    "support_gradient_limit"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
