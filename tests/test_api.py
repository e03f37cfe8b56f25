"""The Python API: `import rose` stays light, `rose.select` on in-memory data runs the selection
stages through the pipeline, returns the top scores and the pool's own rows, and resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

import rose
from rose.stages import STAGES
from rose.store import MANIFEST, read_json


def test_import_rose_loads_no_torch():
    """The CLI reads and checks a config before torch loads; so does `rose.select` until a run starts."""
    code = ("import sys, rose; rose.select, rose.Selection, rose.selection_config, rose.load_config; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def selected(tmp_path_factory, demo_files, tiny_model_dir) -> SimpleNamespace:
    """`rose.select` on in-memory data: a list of dicts as the pool, a Dataset as the target, a tiny
    random Llama with SmolLM2's tokenizer as a local model folder (`tiny_model_dir`). Run once for
    the module: the API's tests and the value checks below read the same run."""
    import datasets

    tmp = tmp_path_factory.mktemp("api")
    pool = [json.loads(line) for line in demo_files["pool"].read_text().splitlines()]
    target = datasets.Dataset.from_list([json.loads(line) for line in demo_files["validation"].read_text().splitlines()])
    config = tiny_config(tmp / "unused", demo_files)  # the tiny recipe; its held-out and test files stay
    run_dir = tmp / "run"
    selection = rose.select(pool, target, model=str(tiny_model_dir), fraction=0.125, run_dir=run_dir, config=config)
    return SimpleNamespace(pool=pool, target=target, model=tiny_model_dir, config=config, run_dir=run_dir, selection=selection)


def test_select_in_memory_data_returns_the_top_scores_and_reuses_finished_stages(selected):
    """What is checked here is the API, not what a model knows."""
    pool, target, model, config, run_dir, selection = (selected.pool, selected.target, selected.model, selected.config,
                                                       selected.run_dir, selected.selection)

    assert selection.run_dir == run_dir and selection.method == "rose"
    assert selection.ids == [row["id"] for row in pool] and selection.scores.shape == (len(pool),)
    k = round(0.125 * len(pool))
    assert len(selection.indices) == k
    scores = selection.scores
    assert np.all(np.diff(scores[selection.indices]) <= 0)  # best first
    rest = np.setdiff1d(np.arange(len(pool)), selection.indices)
    assert scores[selection.indices].min() >= scores[rest].max()  # the top k scores
    assert selection.rows == [pool[i] for i in selection.indices]
    assert selection.dataset.to_list() == selection.rows
    sft = [json.loads(line) for line in selection.files.sft.read_text().splitlines()]
    assert [row["completion"] for row in sft] == [[pool[i]["messages"][-1]] for i in selection.indices]
    assert all(path.exists() for path in vars(selection.files).values())
    assert not (run_dir / STAGES["finetune"].folder).exists()  # selection only

    stages = rose.selection_stages(rose.api.get_selector("rose"))
    assert stages == ["warmup", "base-logprobs", "val-grads", "train-grads", "score", "select"]
    manifests = {name: run_dir / STAGES[name].folder / MANIFEST for name in stages}
    written = {name: (path.stat().st_mtime_ns, read_json(path)["seconds"]) for name, path in manifests.items()}

    again = rose.select(pool, target, model=str(model), fraction=0.125, run_dir=run_dir, config=config)

    assert {name: (path.stat().st_mtime_ns, read_json(path)["seconds"]) for name, path in manifests.items()} == written
    assert np.array_equal(again.scores, selection.scores) and np.array_equal(again.indices, selection.indices)
    assert len(list((run_dir / "inputs").iterdir())) == 2  # one folder per distinct input: the pool and the target


def _checkpoints(run_dir) -> list[str]:
    return read_json(run_dir / "warmup" / MANIFEST)["checkpoints"]


def _train_features(run_dir, ckpt: str) -> np.ndarray:
    """[N, d] a checkpoint's stored pool features; shard names are zero-padded row ranges, so sorted
    by name is pool order."""
    return np.concatenate([np.load(f) for f in sorted((run_dir / "grads/train" / ckpt).glob("shard-*.npy"))])


def test_scores_are_the_learning_rate_weighted_cosines_of_the_stored_features(selected):
    """scores.npy recomputed by hand from what the gradient stages stored: per checkpoint the dot
    products of the stored unit vectors, weighted by the checkpoint's mean learning rate (its
    state.json, normalised to sum 1), averaged over each subtask's validation pairs, the max over
    subtasks. The two warm-up epochs' mean learning rates differ (linear decay), so equal weights
    would give other scores."""
    run_dir, pool = selected.run_dir, selected.pool
    ckpts = _checkpoints(run_dir)
    means = [np.mean(read_json(run_dir / "warmup" / c / "state.json")["lrs"]) for c in ckpts]
    weights = np.array(means) / np.sum(means)
    assert len(ckpts) == 2 and abs(weights[0] - weights[1]) > 0.1  # measured 2/3 and 1/3
    info = read_json(run_dir / "scores/scores.json")
    assert info["checkpoint_weights"] == pytest.approx(weights, abs=1e-12)
    assert info["ids"] == [row["id"] for row in pool] and info["dropped"] == []

    train = [_train_features(run_dir, c).astype(np.float64) for c in ckpts]
    val = [np.load(run_dir / "grads/val" / c / "grads.npy").astype(np.float64) for c in ckpts]
    for t, v in zip(train, val):
        assert t.shape == (len(pool), selected.config.gradients.dim) and v.shape[1] == t.shape[1]
        assert np.abs(np.linalg.norm(t, axis=1) - 1).max() < 1e-2 and np.abs(np.linalg.norm(v, axis=1) - 1).max() < 1e-2
    subtasks = read_json(run_dir / "grads/val" / MANIFEST)["subtasks"]
    assert len(subtasks) == val[0].shape[0]

    def by_hand(w: np.ndarray) -> np.ndarray:
        per_pair = sum(w_c * (t @ v.T) for w_c, t, v in zip(w, train, val))  # [N, M]
        names = list(dict.fromkeys(subtasks))
        per_subtask = np.stack([per_pair[:, [s == name for s in subtasks]].mean(axis=1) for name in names], axis=1)
        return per_subtask.max(axis=1)

    scores = np.load(run_dir / "scores/scores.npy")
    assert np.array_equal(scores, selected.selection.scores)
    assert np.abs(scores - by_hand(weights)).max() < 1e-5
    # the weights matter here, by far more than the tolerance above: measured 9.5e-3
    assert np.abs(scores - by_hand(np.full(len(ckpts), 1 / len(ckpts)))).max() > 1e-4


def test_pool_features_are_adam_directions_of_the_models_own_sft_gradients(selected, tokenizer):
    """Two pool examples' stored features, at each checkpoint, recomputed without rose's gradient
    code: the checkpoint's adapter loaded with peft onto the tiny base model, the example's mean
    response-token NLL from the model's own forward pass, its gradient by plain autograd, Adam's
    step m' / sqrt(v' + eps) (m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g^2, no bias correction)
    written out from the checkpoint's optimizer.safetensors and state.json, then rose's projection
    and normalisation. The stored rows match it (cosine > 0.999: float16 storage) and not the
    projection of the plain gradient."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rose.encoding import encode
    from rose.formats import Origin
    from rose.grads.project import make_projector
    from rose.grads.sinks import ProjectedFeatures

    run_dir, pool, cfg = selected.run_dir, selected.pool, selected.config
    rows = [0, 20]  # in the first and the second shard
    encoded = [encode(tokenizer, pool[i]["messages"][:-1], pool[i]["messages"][-1]["content"], cfg.model.max_length, Origin("t"))
               for i in rows]
    for ckpt in _checkpoints(run_dir):
        folder = run_dir / "warmup" / ckpt
        base = AutoModelForCausalLM.from_pretrained(selected.model, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, folder / "adapter", is_trainable=True).eval()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        assert named and all("lora_" in n for n, _ in named)
        segments = [p.numel() for p in params]

        plain = []
        for seq in encoded:
            logp = torch.log_softmax(model(input_ids=torch.tensor([seq.input_ids])).logits[0].float(), dim=-1)
            n_response = len(seq) - seq.n_prompt
            nll = -sum(logp[t, seq.input_ids[t + 1]] for t in range(seq.n_prompt - 1, len(seq) - 1)) / n_response
            plain.append(torch.cat([g.flatten() for g in torch.autograd.grad(nll, params)]).double())
        g = torch.stack(plain)

        moments, state = load_file(folder / "optimizer.safetensors"), read_json(folder / "state.json")
        m = torch.cat([moments[f"exp_avg.{n}"].flatten() for n, _ in named]).double()
        v = torch.cat([moments[f"exp_avg_sq.{n}"].flatten() for n, _ in named]).double()
        (b1, b2), eps = state["adam_betas"], state["adam_eps"]
        assert v.abs().max() > 0  # the checkpoint has taken steps
        adam = (b1 * m + (1 - b1) * g) / torch.sqrt(b2 * v + (1 - b2) * g.square() + eps)

        project = ProjectedFeatures(make_projector(cfg.gradients.projection, segments, cfg.gradients.dim, cfg.gradients.seed))
        stored = torch.from_numpy(_train_features(run_dir, ckpt)[rows].astype(np.float64))
        as_adam = F.cosine_similarity(stored, project(adam.split(segments, dim=1)).double(), dim=1)
        as_plain = F.cosine_similarity(stored, project(g.split(segments, dim=1)).double(), dim=1)
        assert as_adam.min() > 0.999 and as_plain.max() < 0.9, (ckpt, as_adam, as_plain)  # plain: measured 0.42-0.58


def test_selection_config_writes_rows_once_by_content_and_keeps_paths(tmp_path, demo_files):
    import datasets

    from rose.errors import ConfigError, RunDirError

    rows = [{"prompt": "q", "completion": "a"}, {"prompt": "q2", "completion": "a2"}]
    rose_format = {"q": {"responses": ["a", "b"], "pairs": [[0, 1]], "sft_target": "a", "rejected_target": "b"}}
    config = rose.selection_config(rows, rose_format, run_dir=tmp_path / "run", test=[str(demo_files["test"])],
                                   method="bm25", lora={"r": 2})
    (pool,), (validation,) = config.data.pool, config.data.validation.paths
    assert [json.loads(line) for line in open(pool)] == rows and pool.endswith("/pool.jsonl")
    assert json.load(open(validation)) == rose_format and validation.endswith("/validation.json")
    assert config.data.test == [str(demo_files["test"])] and config.select.method == "bm25" and config.lora.r == 2
    again = rose.selection_config(datasets.Dataset.from_list(rows), rose_format, run_dir=tmp_path / "run")
    assert again.data.pool == [pool]  # the same rows, the same file
    with pytest.raises(ConfigError, match="pass one"):
        rose.selection_config(datasets.DatasetDict(train=datasets.Dataset.from_list(rows)), rose_format, run_dir=tmp_path / "run")
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError):
        rose.selection_config(rows, rose_format, run_dir=tmp_path / "file")
