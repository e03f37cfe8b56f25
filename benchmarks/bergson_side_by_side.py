"""Per-example LoRA gradient collection: Bergson 2.5.1 (EleutherAI, PyPI `bergson`) against rose's engine.

One process, one card, one model, the same token sequences and the same total projection size:

    python benchmarks/bergson_side_by_side.py --out docs/benchmarks/bergson_side_by_side.json
    python benchmarks/bergson_side_by_side.py --tiny --out /tmp/bergson_tiny.json   # CPU check

Model: a Llama-3.1-8B architecture built with random weights on the device, bf16 (`grad_throughput.build`:
LoRA r=128, alpha=512, dropout 0 on q/k/v/o, lora_B drawn N(0, 1e-3) so every LoRA weight gets a
gradient); throughput does not depend on the weights' values. Examples: `--examples` token
sequences with the prompt/total lengths of a seeded sample of the real pool
(`benchmarks/pool_lengths.json`, SmolLM2 tokenizer) and random token ids
(`grad_throughput.make_examples`); both methods get the identical sequences, and both train on
the response tokens only with the mean response-token NLL of each example (rose's `SFTLoss`;
Bergson's `loss_fn=ce, loss_reduction=mean` with the prompt's labels set to -100).

What each computes: the per-example gradient of the same LoRA weights (the A and B matrices of
q/k/v/o in every layer). Bergson hooks the PEFT model's `lora_A.default` / `lora_B.default`
Linear layers (the modules `bergson.utils.peft.detect_peft_modules` names, as Bergson's own
`build` does for a PEFT model), in padded batches (`bergson.data.allocate_batches`, at most
`--batch-tokens` padded tokens each), with the model's gradients configured as Bergson's
`setup_model_and_peft` leaves them (every weight frozen except the input embedding). Its
per-module projection (`projection_dim` p, the default `per_module` target) maps each module's
[out, in] gradient G to L G R^T ([p, p]: L [p, out], R [p, in], Rademacher / sqrt(p)), so its
total dimension is p^2 x (number of LoRA matrices) = p^2 x 2 x 4 x 32 = 256 p^2 for this
model; rose's sparse projection gets exactly that d (p = 6: d = 9216; no integer p gives 8192).
Bergson's `global` target (one d-vector from a [d, n] matrix streamed per module) regenerates
d x n random entries per module and batch, far too slow at d = 9216 and n = 524,288, so it is
not timed. Each Bergson pass is one `bergson.collect_gradients` call, which writes its on-disk
index (bf16 `gradients.bin`) and metadata into a fresh folder; rose's features go to a
preallocated CPU tensor.

Modes (all timed on the same model, in this order):
  bergson_plain    Bergson, raw gradients, per-module projection (its default path), eager
  bergson_adam     Bergson with an `AdamNormalizer` per module (g / (sqrt(v) + eps), the second
                   moments the rose modes use): its path for optimizer-normalised gradients, eager
  rose_plain_eager rose's engine, plain gradients, sparse projection to d, L2 norm (val-grads), eager
  rose_adam_eager  rose's engine, Adam direction m'/sqrt(v'+eps) + sparse projection fused, L2
                   norm: the train-grads stage, eager
  then, on a GPU, with the decoder's LoRA-free blocks and rotary embedding compiled
  (`models.compile_lora_free_blocks`, `compile_rotary_embedding`, as rose's gradient stages run;
  Bergson's hooks sit on the LoRA layers, which stay eager, so the same compiled code serves both):
  bergson_adam_compiled, rose_adam (the train-grads stage as it runs)
Fair pairs: eager against eager and compiled against compiled. Every mode is warmed up on the
first `--warmup-examples` examples (twice for compiled modes: dynamic-shape recompiles), then
timed `--repeats` times on all of them; the tables use the median, and peak memory is
`torch.cuda.max_memory_allocated` over the timed repeats (reset before each; the 16 GB of
weights included). Bergson's projection matrices are made in its warm-up and reused, as they are
across the batches of one run. Bergson ends every pass by writing its processor state with
`torch.save` (`GradientProcessor.save`: with the Adam normaliser, the second moments of every
LoRA weight, about 0.4 GB for this model): a once-per-index cost, timed apart
(`normalizer_write_seconds`) and left out of `seconds_excl_write`, which the speedups use.

Before timing, each method's stored features of a few examples are checked against the same
projection of the one-example-at-a-time autograd gradients (`grads.oracle.sft_grads`): Bergson's
with its own projection matrices (`create_module_projection_matrix`), rose's with its own sketch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # Bergson's progress bars

import bergson
import datasets
import numpy as np
import torch
from bergson import GradientProcessor, IndexConfig, collect_gradients
from bergson.collector.collector import create_module_projection_matrix
from bergson.data import allocate_batches, load_gradients
from bergson.gradients import AdamNormalizer
from bergson.utils.peft import detect_peft_modules
from grad_throughput import build, make_examples, timed

from rose.encoding import Encoded
from rose.grads import engine, oracle
from rose.grads.adam import AdamMoments
from rose.grads.losses import SFTLoss
from rose.grads.project import SparseProjector
from rose.grads.sinks import ProjectedFeatures
from rose.models import compile_lora_free_blocks, compile_rotary_embedding, lora_parameters

logging.getLogger("CollectorComputer").disabled = True  # logs all 256 module names on every pass


def bergson_dataset(examples: list[Encoded]) -> datasets.Dataset:
    """The examples as Bergson reads them: input ids, labels (-100 on the prompt) and lengths."""
    return datasets.Dataset.from_dict({
        "input_ids": [list(e.input_ids) for e in examples],
        "labels": [[-100] * e.n_prompt + list(e.input_ids[e.n_prompt:]) for e in examples],
        "length": [len(e) for e in examples],
    })


def module_name(param_name: str) -> str:
    """A LoRA weight's name -> the name Bergson gives its Linear under `model.base_model`."""
    return param_name.removeprefix("base_model.").removesuffix(".weight")


@contextlib.contextmanager
def bergson_grad_config(model):
    """requires_grad as Bergson's `setup_model_and_peft` leaves it (everything frozen but the input
    embedding, so the hooks' backward reaches every layer), restored afterwards."""
    before = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    model.get_input_embeddings().requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in before.items():
            p.requires_grad_(flag)


class BergsonRun:
    """One `collect_gradients` pass of Bergson over the examples, into a fresh index folder. The
    seconds spent writing the processor state at the pass's end (`GradientProcessor.save`) are
    kept in `write_seconds`."""

    def __init__(self, model, examples, batch_tokens: int, processor: GradientProcessor, root: Path, precision: str):
        self.model, self.data = model, bergson_dataset(examples)
        self.modules = detect_peft_modules(model)
        self.batches = allocate_batches(self.data["length"][:], batch_tokens)
        self.processor, self.write_seconds = processor, 0.0
        self.run_path = root / ("adam" if processor.normalizers else "plain")
        self.cfg = IndexConfig(run_path=str(self.run_path), precision=precision, projection_dim=processor.projection_dim,
                               token_batch_size=batch_tokens, loss_fn="ce", loss_reduction="mean")

    def __call__(self) -> None:
        shutil.rmtree(self.cfg.partial_run_path, ignore_errors=True)
        save, self.write_seconds = self.processor.save, 0.0

        def timed_save(path: Path) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            begin = time.perf_counter()
            save(path)
            self.write_seconds += time.perf_counter() - begin

        self.processor.save = timed_save
        try:
            with bergson_grad_config(self.model):
                collect_gradients(self.model, self.data, self.processor, self.cfg, batches=self.batches,
                                  target_modules=self.modules)
        finally:
            del self.processor.save  # the class's method again

    def features(self) -> tuple[np.ndarray, dict[str, int]]:
        """([N, total] stored rows as float32, {module: columns} in their column order)."""
        path = self.cfg.partial_run_path
        sizes = json.loads((path / "info.json").read_text())["grad_sizes"]
        return np.array(load_gradients(path), dtype=np.float32), sizes


def bergson_reference(grads: torch.Tensor, names: list[str], shapes: list[torch.Size], sizes: dict[str, int],
                      p: int, second_moments: list[torch.Tensor] | None) -> torch.Tensor:
    """[N, total]: Bergson's per-module projection L (G / (sqrt(v) + eps)) R^T of flat per-example
    LoRA gradients [N, D], with its own matrices, in its column order."""
    blocks = {}
    for name, shape, g, v in zip(names, shapes, grads.float().cpu().split([s.numel() for s in shapes], dim=1),
                                 second_moments or [None] * len(names)):
        mod = module_name(name)
        g = g.view(-1, *shape)
        if v is not None:
            g = g / (v.float().cpu().sqrt() + 1e-8)
        left = create_module_projection_matrix(mod, "left", p, shape[0], torch.float32, torch.device("cpu"),
                                               "rademacher", "jl", None)
        right = create_module_projection_matrix(mod, "right", p, shape[1], torch.float32, torch.device("cpu"),
                                                "rademacher", "jl", None)
        blocks[mod] = (left @ g @ right.T).flatten(1)
    return torch.cat([blocks[m] for m in sizes], dim=1)


def compare_rows(got, want) -> tuple[list[float], list[float]]:
    """Per row of [N, D]: relative error of got against want, and their cosine."""
    got, want = torch.as_tensor(got).float(), torch.as_tensor(want).float()
    return ((got - want).norm(dim=1) / want.norm(dim=1)).tolist(), torch.nn.functional.cosine_similarity(got, want, dim=1).tolist()


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="benchmarks/pool_lengths.json",
                        help="JSON list of [prompt_tokens, total_tokens] from the real pool (pool_lengths.py).")
    parser.add_argument("--tiny", action="store_true",
                        help="A 2-layer toy Llama, float32, r=8, 24 examples of at most 256 tokens: the CPU check.")
    parser.add_argument("--examples", type=int, default=2000,
                        help="Timed examples (at least 2,000 for a fair ratio: padding and once-per-pass costs fade).")
    parser.add_argument("--warmup-examples", type=int, default=128, help="The first examples, run before timing each mode.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each mode after its warm-up (at least 3).")
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=512)
    parser.add_argument("--bergson-dim", type=int, default=6,
                        help="Bergson's projection_dim p: each LoRA matrix's gradient -> [p, p]; rose's d = p^2 x matrices.")
    parser.add_argument("--batch-tokens", type=int, default=6144,
                        help="Tokens per batch for both: rose's packed rows, Bergson's padded batches (token_batch_size).")
    parser.add_argument("--check-examples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks/bergson_side_by_side.json")
    args = parser.parse_args()
    if args.tiny:
        args.examples, args.warmup_examples, args.max_len, args.rank, args.alpha = 24, 8, 256, 8, 32
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (each mode reports the median)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    arch = "tiny" if args.tiny else "llama-3.1-8b"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    versions = {name: __import__(name).__version__ for name in ("torch", "transformers", "peft", "numpy", "datasets", "pyarrow", "fsspec", "huggingface_hub")}
    versions["bergson"] = bergson.__version__
    print(f"device: {card}; " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    model = build(arch, args.rank, args.alpha, device, dtype)
    params = lora_parameters(model)
    names, plist = list(params), list(params.values())
    shapes, segments = [p.shape for p in plist], [p.numel() for p in plist]
    model_gb = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    examples = make_examples(json.loads(Path(args.lengths).read_text()), args.examples, args.max_len,
                             model.get_base_model().config.vocab_size, args.seed)
    tokens = sum(len(e) for e in examples)
    p = args.bergson_dim
    d = p * p * len(names)
    gen = torch.Generator(device="cpu").manual_seed(0)
    moments = AdamMoments((torch.randn(sum(segments), generator=gen) * 1e-4).to(device),
                          (torch.rand(sum(segments), generator=gen) * 1e-8).to(device), 0.9, 0.999, 1e-8)
    second = [v.view(s) for v, s in zip(moments.exp_avg_sq.split(segments), shapes)]
    normalizers = {module_name(n): AdamNormalizer(weight_avg_sq=v) for n, v in zip(names, second)}
    sparse = SparseProjector(segments, d, seed=0)
    sinks = {"plain": ProjectedFeatures(sparse, None), "adam": ProjectedFeatures(sparse, moments)}
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    root = Path(tempfile.mkdtemp(prefix="bergson_side_by_side_"))
    processors = {"plain": GradientProcessor({}, projection_dim=p), "adam": GradientProcessor(normalizers, projection_dim=p)}
    berg = {kind: BergsonRun(model, examples, args.batch_tokens, proc, root, precision) for kind, proc in processors.items()}
    warm = examples[:args.warmup_examples]
    berg_warm = {kind: BergsonRun(model, warm, args.batch_tokens, proc, root / "warm", precision) for kind, proc in processors.items()}
    lengths = [len(e) for e in examples]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in berg["plain"].batches)
    report: dict = {
        "card": card, "versions": versions, "arch": arch, "dtype": str(dtype).removeprefix("torch."),
        "weights": "random (built from the architecture config); speed does not depend on weight values",
        "examples": {"source": "synthetic: random token ids with the prompt/total lengths of a seeded sample of the real "
                               "pool (benchmarks/pool_lengths.json, SmolLM2 tokenizer), identical for every mode",
                     "count": len(examples), "tokens": tokens, "mean_tokens": tokens / len(examples),
                     "response_tokens": sum(len(e) - e.n_prompt for e in examples)},
        "gradients": {"what": "per-example gradient of each example's mean response-token NLL w.r.t. the LoRA A and B "
                              "matrices of q/k/v/o in every layer (the same weights for both)",
                      "lora": {"r": args.rank, "alpha": args.alpha, "dropout": 0.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
                               "matrices": len(names), "params": sum(segments)}},
        "projection": {"bergson": f"per_module, projection_dim p={p}: each LoRA matrix's [out, in] gradient -> L G R^T, "
                                  f"[p, p] (Rademacher, scale 1/sqrt(p), seed None); {len(names)} matrices x p^2 = {d}",
                       "rose": f"sparse (balanced CountSketch, seed 0) of all LoRA gradients to d={d}, then L2 norm",
                       "bergson_projection_dim": p, "bergson_total_dim": d, "rose_dim": d},
        "bergson": {"api": "bergson.collect_gradients per pass, writing its on-disk index (gradients.bin, bf16 on GPU) to a fresh folder",
                    "target_modules": "detect_peft_modules(model): lora_A.default / lora_B.default of every LoRA layer",
                    "requires_grad": "as setup_model_and_peft: all frozen except the input embedding",
                    "batching": f"allocate_batches(lengths, {args.batch_tokens}): padded, max_len x batch <= {args.batch_tokens}",
                    "batches": len(berg["plain"].batches), "padding_fraction": 1 - tokens / padded,
                    "loss": "loss_fn=ce, loss_reduction=mean, labels -100 on the prompt",
                    "attention": "sdpa (no attention mask, right padding)",
                    "compiled": "eager in bergson_plain and bergson_adam; bergson_adam_compiled with rose's compiled LoRA-free blocks",
                    "normalizer_write": "GradientProcessor.save at each pass's end (torch.save of the processor state), timed apart",
                    "adam_mode": "AdamNormalizer(weight_avg_sq=v) per module: g / (sqrt(v) + 1e-8), then the projection"},
        "rose": {"api": "engine.per_example_grads (packed rows, varlen attention, one grouped GEMM per LoRA matrix) -> "
                        "ProjectedFeatures -> a preallocated CPU [N, d] tensor",
                 "batching": f"token_packs: at most {args.batch_tokens} tokens per packed row, no padding",
                 "adam_mode": "m'/sqrt(v'+eps), m' = 0.9 m + 0.1 g, v' = 0.999 v + 0.001 g^2 (fused with the sketch on GPU)",
                 "compiled": "eager in the *_eager modes; rose_adam and bergson_adam_compiled with the LoRA-free blocks and the rotary embedding compiled (on a GPU)"},
        "moments": "m ~ N(0, 1e-4^2), v ~ U(0, 1e-8) per LoRA weight (seed 0); Bergson's normalizer uses the same v",
        "timing": f"each mode warmed up on the first {args.warmup_examples} examples, then timed {args.repeats} times on all; "
                  "seconds is the median (Bergson's seconds_excl_write: the median of each pass less its normaliser write); "
                  "peak memory is max_memory_allocated over the timed repeats, reset before each, weights included",
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "model_memory_gb": model_gb,
        "checks": {}, "modes": {},
    }
    print(f"  {len(examples)} examples, {tokens} tokens; {len(names)} LoRA matrices, {sum(segments):,} LoRA weights; "
          f"Bergson p={p} -> {len(names)} x {p}^2 = {d} = rose's d; Bergson: {len(berg['plain'].batches)} padded batches "
          f"({report['bergson']['padding_fraction']:.1%} padding)", flush=True)

    # checks: each method's stored features against its own projection of one-at-a-time autograd gradients
    check = examples[:args.check_examples]
    want = torch.stack(list(oracle.sft_grads(model, plist, check, 0)))
    model.zero_grad()
    for kind, run in berg.items():
        sub = BergsonRun(model, check, args.batch_tokens, run.processor, root / "check", precision)
        sub()
        got, sizes = sub.features()
        ref = bergson_reference(want, names, shapes, sizes, p, second if kind == "adam" else None)
        errs, cos = compare_rows(got, ref)
        report["checks"][f"bergson_{kind}_vs_reference_max_rel_err"] = max(errs)
        report["checks"][f"bergson_{kind}_vs_reference_min_cosine"] = min(cos)
        print(f"  bergson_{kind} stored rows vs L (G{' / (sqrt(v)+eps)' if kind == 'adam' else ''}) R^T of the reference "
              f"gradients, per example: relative error {' '.join(f'{e:.1e}' for e in errs)}, "
              f"cosine {' '.join(f'{c:.4f}' for c in cos)}", flush=True)

    def rose_features(kind: str, items: list[Encoded]) -> torch.Tensor:
        out = torch.empty(len(items), d)
        for idx, parts in engine.per_example_grads(model, names, items, SFTLoss(), args.batch_tokens, device):
            out[idx] = sinks[kind](parts).cpu()
        return out

    expected = {kind: sink(g.contiguous() for g in want.split(segments, dim=1)).cpu() for kind, sink in sinks.items()}
    del want

    def check_rose(label: str) -> None:
        for kind in sinks:
            errs, cos = compare_rows(rose_features(kind, check), expected[kind])
            report["checks"][f"rose_{kind}{label}_vs_reference_max_rel_err"] = max(errs)
            report["checks"][f"rose_{kind}{label}_vs_reference_min_cosine"] = min(cos)
            print(f"  rose_{kind}{label} features vs the same sink on the reference gradients, per example: relative error "
                  f"{' '.join(f'{e:.1e}' for e in errs)}, cosine {' '.join(f'{c:.4f}' for c in cos)}", flush=True)

    check_rose("_eager")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write_report() -> None:
        report["wall_seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(report, indent=2) + "\n")

    def measure(name: str, fn, warm, warmups: int = 1, run: BergsonRun | None = None) -> None:
        for _ in range(warmups):
            warm()
        runs, writes = [], []
        for _ in range(args.repeats):
            runs.append(timed(fn, device))
            writes.append(run.write_seconds if run is not None else 0.0)
        seconds, peak = statistics.median(s for s, _ in runs), max(m for _, m in runs)
        net = statistics.median(s - w for (s, _), w in zip(runs, writes))
        report["modes"][name] = {"seconds": seconds, "seconds_per_repeat": [s for s, _ in runs],
                                 "normalizer_write_seconds": statistics.median(writes), "seconds_excl_write": net,
                                 "tokens_per_s": tokens / net, "examples_per_s": len(examples) / net, "peak_memory_gb": peak}
        write_report()  # after every mode: a run cut off early keeps the modes it finished
        print(f"  {name:22s} {tokens / net:9.0f} tok/s {len(examples) / net:8.2f} ex/s  peak {peak:6.1f} GB  "
              f"({args.repeats} repeats: {min(s for s, _ in runs):.3f}-{max(s for s, _ in runs):.3f} s"
              + (f", of which the normaliser write {statistics.median(writes):.3f} s" if run is not None else "") + ")", flush=True)

    def rose_mode(kind: str):
        return (lambda: rose_features(kind, examples)), (lambda: rose_features(kind, warm))

    measure("bergson_plain", berg["plain"], berg_warm["plain"], run=berg["plain"])
    measure("bergson_adam", berg["adam"], berg_warm["adam"], run=berg["adam"])
    measure("rose_plain_eager", *rose_mode("plain"))
    measure("rose_adam_eager", *rose_mode("adam"))
    if device.type == "cuda":
        report["rose"]["compiled_blocks"] = compile_lora_free_blocks(model)
        report["rose"]["compiled_rope"] = bool(compile_rotary_embedding(model))
        check_rose("")
        measure("bergson_adam_compiled", berg["adam"], berg_warm["adam"], warmups=2, run=berg["adam"])
        measure("rose_adam", *rose_mode("adam"), warmups=2)
    shutil.rmtree(root, ignore_errors=True)

    modes = report["modes"]
    rate = {name: m["tokens_per_s"] for name, m in modes.items()}
    report["speedup"] = {"eager: rose_adam_eager vs bergson_adam": rate["rose_adam_eager"] / rate["bergson_adam"],
                         "eager: rose_plain_eager vs bergson_plain": rate["rose_plain_eager"] / rate["bergson_plain"]}
    if "rose_adam" in rate:
        report["speedup"]["compiled: rose_adam vs bergson_adam_compiled"] = rate["rose_adam"] / rate["bergson_adam_compiled"]
    write_report()
    print(f"\n{arch}, {dtype}, {card}: {len(examples)} examples, {tokens} tokens, projection {d}")
    print(f"{'mode':22s} {'tok/s':>9s} {'ex/s':>8s} {'peak GB':>8s} {'median s':>9s} {'write s':>8s}")
    for name, m in modes.items():
        print(f"{name:22s} {m['tokens_per_s']:9.0f} {m['examples_per_s']:8.2f} {m['peak_memory_gb']:8.1f} "
              f"{m['seconds']:9.3f} {m['normalizer_write_seconds']:8.3f}")
    print("speedup: " + ", ".join(f"{k} {v:.2f}x" for k, v in report["speedup"].items()))
    print(f"wrote {out} ({report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
