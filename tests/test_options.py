"""The selection study's options (`select.*`), each run on the tiny random Llama's pipeline and checked
against what it claims to compute: validation gradients from the model's own forward pass and
plain autograd, scores and selections recomputed from the stored features by the definition.
Each test fails if its option is ignored (the paper's result is measured to differ)."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import llama_config

from rose.compare import _priority, variants
from rose.config import load_config
from rose.errors import ConfigError
from rose.grads.losses import dpo_sigmoid_weights
from rose.grads.project import make_projector
from rose.influence import aggregate, pair_weights, similarities, subspace
from rose.models import lora_parameters
from rose.pipeline import run_stages
from rose.selection import round_robin
from rose.selectors.hybrid import rank_fractions
from rose.stages import STAGES

pytestmark = pytest.mark.xdist_group("options")  # one worker runs the module, so its module fixture runs once

PAPER = {"balance": "none", "over_shots": "mean", "over_subtasks": "max", "checkpoint_weights": "lr", "sides": "pair",
         "dpo_logprobs": "sum", "precondition": "none"}


# ------------------------------------------------------------------------------ the definitions, on numbers


def test_round_robin_takes_each_columns_next_best_in_turn():
    cols = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.95], [0.5, 0.9], [0.0, 0.0]])
    # column 0's best (0), column 1's best (2), column 0's next (1), column 1's next not taken (3), ...
    assert round_robin(cols, 0.8).tolist() == [0, 2, 1, 3]
    assert round_robin(cols, 1.0).tolist() == [0, 2, 1, 3, 4]  # every example once: no turn wasted on a taken one
    assert round_robin(np.array([[1.0], [1.0], [0.0]]), 0.67).tolist() == [0, 1]  # ties by pool order
    assert round_robin(cols, 0.01).tolist() == [0]  # at least one


def test_aggregation_over_shots_and_subtasks_follows_the_definition():
    rng = np.random.default_rng(0)
    sims, subtasks = rng.standard_normal((7, 5)), ["b", "a", "b", "c", "a"]  # first-seen order b, a, c
    for shots, tasks in itertools.product(("mean", "max"), ("max", "mean")):
        scores, per_subtask = aggregate(sims, subtasks, shots, tasks)
        pick = np.mean if shots == "mean" else np.max
        expected = np.stack([pick(sims[:, [j for j, s in enumerate(subtasks) if s == name]], axis=1) for name in "bac"], axis=1)
        assert np.allclose(per_subtask, expected)
        assert np.allclose(scores, expected.max(axis=1) if tasks == "max" else expected.mean(axis=1))


def test_checkpoint_weights_lr_last_and_lr_times_dpo_sigmoid():
    lrs, dpo = [3.0, 1.0], [np.array([0.5, 1.0, 0.1]), np.array([0.2, 0.2, 0.9])]
    assert np.allclose(pair_weights("lr", lrs, 3), [[0.75] * 3, [0.25] * 3])
    assert np.allclose(pair_weights("last", lrs, 3), [[0, 0, 0], [1, 1, 1]])
    raw = np.array([[0.75 * 0.5, 0.75 * 1.0, 0.75 * 0.1], [0.25 * 0.2, 0.25 * 0.2, 0.25 * 0.9]])
    assert np.allclose(pair_weights("lr_dpo", lrs, 3, dpo), raw / raw.sum(axis=0).mean())


def test_dpo_sigmoid_weights_of_float32_log_probs_stay_above_zero_at_a_1500_nat_margin():
    policy, reference, n_tokens = torch.tensor([[-20.0, -30.0], [-5.0, -6.0]]), torch.tensor([[-1520.0, -30.0], [-5.0, -5.0]]), torch.ones(2, 2)
    weights = dpo_sigmoid_weights(policy, reference, n_tokens, beta=0.1)
    assert weights.dtype == torch.float64 and float(torch.sigmoid(torch.tensor(-150.0))) == 0  # float32's would be
    assert np.allclose(weights.numpy(), [np.exp(-150.0) / (1 + np.exp(-150.0)), 1 / (1 + np.exp(0.1))], rtol=1e-6, atol=0)


def test_gist_similarities_are_cosines_in_the_top_singular_subspace():
    rng = np.random.default_rng(1)
    train, val = rng.standard_normal((9, 12)), rng.standard_normal((4, 12))
    basis = subspace(val, 2)
    _, _, vt = np.linalg.svd(val)
    assert np.allclose(np.abs(basis.T @ vt[:2].T), np.eye(2), atol=1e-8)  # the top two right singular vectors
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = unit(train @ vt[:2].T) @ unit(val @ vt[:2].T).T
    got = similarities([[train[:5], train[5:]]], [val], np.ones((1, 4)), bases=[basis])
    assert np.allclose(got, expected, atol=1e-5) and not np.allclose(got, train @ val.T, atol=1e-2)
    assert subspace(val, 50).shape == (12, 4)  # capped at the number of validation pairs


def test_rank_fractions_scale_ranks_to_unit_interval():
    assert rank_fractions(np.array([0.3, -1.0, 2.0, 0.3])).tolist() == [2 / 3, 0.0, 1.0, 1 / 3]  # the earlier of a tie ranks higher


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(("overrides", "message"), [
    (["select.method=rose-paper", "select.balance=pairs"], "does not apply to method 'rose-paper'"),
    (["select.method=less", "select.sides=apart"], "methods that take it: rose, hybrid"),
    (["select.method=bm25", "select.precondition=adam"], "does not apply to method 'bm25'"),
    (["select.method=less", "select.checkpoint_weights=lr_dpo"], "needs DPO validation gradients"),
    (["select.sides=apart", "select.precondition=gist"], "do not combine"),
    (["select.precondition=gist", "gradients.projection=none"], "exact scoring"),
    (["compare.ablations={rose: {method: rose}}"], "the name of a registered method"),
    (["compare.ablations={rr: {balance: pairs}}"], "needs a method"),
    (["compare.ablations={rr: {method: rose, fraction: 0.1}}"], "unknown option"),
    (["compare.methods=[rose, rr]"], "or a name of compare.ablations"),
])
def test_options_a_method_does_not_take_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_ablations_are_named_variants_of_the_comparison_run_first_seed_first():
    config = load_config(None, ["compare.ablations={rr: {method: rose, balance: pairs}, mean: {method: less, over_shots: max}}",
                                "compare.methods=[rose, rr, random, mean]", "compare.finetune_seeds=[0, 1]",
                                "compare.random_seeds=[0, 1]", "compare.budgets=[0.1]", "compare.budget_methods=[rr]",
                                "compare.shot_methods=[]", "select.over_shots=max"])
    by_name = {v.name: v for v in variants(config)}
    rr = by_name["rr-p0.05-ft1"].config.select
    assert (rr.method, rr.options.balance, rr.options.over_shots, rr.seed) == ("rose", "pairs", "mean", 0)  # run options not inherited
    assert by_name["rose-p0.05"].config.select.options.over_shots == "max"  # a registered method keeps the run's
    assert by_name["mean-p0.05"].config.select.method == "less" and by_name["rr-p0.1"].group == "budget"
    order = [v.name for v in sorted(variants(config), key=lambda v: _priority(config, v))]
    assert order == ["rr-p0.1", "rr-p0.1-ft1", "rose-p0.05", "rr-p0.05", "random-seed0-p0.05", "mean-p0.05",
                     "rose-p0.05-ft1", "rr-p0.05-ft1", "random-seed1-p0.05", "mean-p0.05-ft1"]


def test_the_few_shot_sweep_runs_every_seed_of_each_method(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    config = load_config(None, ["compare.methods=[rose]", "compare.finetune_seeds=[0, 1]", "compare.random_seeds=[0, 1]",
                                "compare.budget_methods=[]", f"compare.shots={{'1': [{one}]}}", "compare.shot_methods=[rose, random]"])
    shots = {v.name: (v.seed, v.finetune_seed) for v in variants(config) if v.group == "shots"}
    assert shots == {"rose-p0.05-1shot": (None, 0), "rose-p0.05-ft1-1shot": (None, 1),
                     "random-seed0-p0.05-1shot": (0, 0), "random-seed1-p0.05-1shot": (1, 0)}


# ------------------------------------------------------------------------------ on the tiny pipeline


@pytest.fixture(scope="module")
def variant(tiny_run, demo_files, tiny_model_dir, tmp_path_factory):
    """variant(name, {other overrides}, **select options) -> the Run of the finished tiny run's warm-up and pool
    gradients, rescored with those options over 2 validation subtasks (pairs 0-1 and 2-3):
    base-logprobs, val-grads, score and select, stage folders shared by key in one cache."""
    root, runs = tmp_path_factory.mktemp("options"), {}

    def run(name: str, extra: dict | None = None, **options):
        if name not in runs:
            for stage in ("warmup", "train-grads"):  # keys that do not depend on the validation set
                shutil.copytree(tiny_run[0] / STAGES[stage].folder, root / name / STAGES[stage].folder)
            config = llama_config(root / name, demo_files, tiny_model_dir, **{"data.validation.subtasks": 2, **(extra or {}),
                                                            **{f"select.{k}": v for k, v in options.items()}})
            base = next(iter(runs.values()), None)
            runs[name] = run_stages(config, ["base-logprobs", "val-grads", "score", "select"], base=base, cache=root / "cache")
        return runs[name]

    return run


def _stored(run, name: str) -> np.ndarray:
    return np.load(run.dir / "scores" / name)


def _selected(run) -> list[int]:
    index = {e.id: i for i, e in enumerate(run.pool.records)}
    return [index[json.loads(line)["id"]] for line in (run.dir / "selection/selected.jsonl").read_text().splitlines()]


def _features(run, kind: str, ckpt, name: str = "grads.npy") -> np.ndarray:
    folder = run.dir / ("grads/val" if kind == "val" else "grads/train") / ckpt.path.name
    if kind == "val":
        return np.load(folder / name).astype(np.float64)
    return np.concatenate([np.load(f) for f in sorted(folder.glob("shard-*.npy"))]).astype(np.float64)


def _own_logp(model, seq) -> tuple[torch.Tensor, int]:
    """A response's summed log-prob from the model's own forward pass (differentiable), and its length."""
    logp = torch.log_softmax(model(input_ids=torch.tensor([seq.input_ids])).logits[0].double(), dim=-1)
    positions = torch.arange(seq.n_prompt, len(seq))
    return logp[positions - 1, torch.tensor(seq.input_ids)[positions]].sum(), len(seq) - seq.n_prompt


def _own_projected(run, ckpt, losses, transform=None) -> np.ndarray:
    """[M, d] unit projections of plain autograd gradients of each loss (a function of the model)
    w.r.t. the LoRA weights at `ckpt`, optionally transformed first."""
    run.model.load_adapter(ckpt.adapter)
    model = run.model.model
    params = list(lora_parameters(model).values())
    g = run.config.gradients
    projector = make_projector(g.projection, [p.numel() for p in params], g.dim, g.seed)
    grads = torch.stack([torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss(model), params)]) for loss in losses])
    grads = grads.float() if transform is None else transform(grads).float()
    return F.normalize(projector(grads).double(), dim=1).numpy()


def _dpo_losses(run, per_token: bool):
    """Each validation pair's DPO loss as a function of the model, from its own forward pass."""
    ref = np.load(run.dir / "base_logprobs/validation_logps.npy")
    beta = run.config.gradients.dpo_beta

    def loss(pair, r):
        def of(model):
            (lc, nc), (lr, nr) = (_own_logp(model, s) for s in pair)
            dc, dr = lc - float(r[0]), lr - float(r[1])
            if per_token:
                dc, dr = dc / nc, dr / nr
            return -F.logsigmoid(beta * (dc - dr))
        return of

    return [loss(pair, r) for pair, r in zip(run.validation.encoded, ref)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _weights(run) -> np.ndarray:
    lrs = [c.mean_lr() for c in run.checkpoints()]
    return np.array(lrs) / np.sum(lrs)


def _by_definition(run, val: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """[N, M] sum over checkpoints of weights[c, m] x <stored pool feature, val[c][m]>, by numpy."""
    return sum(w * (_features(run, "train", c) @ v.T) for c, w, v in zip(run.checkpoints(), weights, val))


def test_explicit_paper_options_are_rose_paper(variant):
    paper, explicit = variant("paper", method="rose-paper"), variant("explicit", **PAPER)
    assert np.array_equal(_stored(paper, "scores.npy"), _stored(explicit, "scores.npy"))
    val = [_features(paper, "val", c) for c in paper.checkpoints()]
    sims = _by_definition(paper, val, np.repeat(_weights(paper)[:, None], 4, axis=1))
    assert np.abs(_stored(paper, "per_pair.npy") - sims).max() < 1e-5
    assert np.abs(_stored(paper, "per_subtask.npy") - np.stack([sims[:, :2].mean(1), sims[:, 2:].mean(1)], 1)).max() < 1e-5


def test_rose_default_is_the_studys_mean_over_subtasks(variant):
    """`rose` with no options: the paper's similarities, the mean over the two subtasks (not the max)."""
    default, paper = variant("default"), variant("paper", method="rose-paper")
    sims = _stored(paper, "per_pair.npy").astype(np.float64)
    assert np.abs(_stored(default, "per_pair.npy") - sims).max() < 1e-6
    per_subtask = np.stack([sims[:, :2].mean(1), sims[:, 2:].mean(1)], 1)
    assert np.abs(_stored(default, "scores.npy") - per_subtask.mean(1)).max() < 1e-5
    assert np.abs(_stored(default, "scores.npy") - per_subtask.max(1)).max() > 1e-3  # the paper's max differs


def test_sides_chosen_is_less_and_shares_its_validation_gradients(variant):
    chosen, less = variant("chosen", sides="chosen", over_subtasks="max"), variant("less", method="less")  # LESS's aggregation
    assert np.array_equal(_stored(chosen, "scores.npy"), _stored(less, "scores.npy"))
    assert (chosen.dir / "grads/val").resolve() == (less.dir / "grads/val").resolve()
    assert not np.allclose(_stored(chosen, "scores.npy"), _stored(variant("paper", method="rose-paper"), "scores.npy"), atol=1e-3)


def test_sides_apart_scores_cosine_with_chosen_minus_cosine_with_rejected(variant):
    run = variant("apart", sides="apart")
    ckpt = run.checkpoints()[-1]
    pairs = run.validation.encoded
    for i, name in enumerate(("chosen", "rejected")):  # each side's SFT gradient (mean NLL), plain autograd
        own = _own_projected(run, ckpt, [lambda m, s=p[i]: -_own_logp(m, s)[0] / _own_logp(m, s)[1] for p in pairs])
        assert _cos(_features(run, "val", ckpt, f"{name}.npy"), own).min() > 0.999
    val = [_features(run, "val", c, "chosen.npy") - _features(run, "val", c, "rejected.npy") for c in run.checkpoints()]
    sims = _by_definition(run, val, np.repeat(_weights(run)[:, None], 4, axis=1))
    assert np.abs(_stored(run, "per_pair.npy") - sims).max() < 1e-5
    paper = _stored(variant("paper", method="rose-paper"), "per_pair.npy")
    assert np.abs(sims - paper).max() > 0.01  # measured 0.18


def test_dpo_logprobs_mean_takes_the_gradient_of_per_token_margins(variant):
    run = variant("mean", dpo_logprobs="mean")
    ckpt = run.checkpoints()[-1]
    stored = _features(run, "val", ckpt)
    assert _cos(stored, _own_projected(run, ckpt, _dpo_losses(run, per_token=True))).min() > 0.999
    assert _cos(stored, _features(variant("paper", method="rose-paper"), "val", ckpt)).min() < 0.99  # measured 0.91


def test_precondition_adam_divides_validation_gradients_by_the_second_moment(variant):
    run = variant("adam", precondition="adam")
    ckpt = run.checkpoints()[-1]
    v, eps = ckpt.moments(run.model.param_names).exp_avg_sq.double(), ckpt.state()["adam_eps"]
    stored = _features(run, "val", ckpt)
    own = _own_projected(run, ckpt, _dpo_losses(run, per_token=False), lambda g: g / torch.sqrt(v + eps))
    assert _cos(stored, own).min() > 0.999
    assert _cos(stored, _features(variant("paper", method="rose-paper"), "val", ckpt)).max() < 0.9  # measured 0.82


def _stored_and_own_dpo_sigmoids(run) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per checkpoint: the stored DPO weights, and sigma(-beta * margin) of each pair from the model's own forward."""
    ref, beta = np.load(run.dir / "base_logprobs/validation_logps.npy"), run.config.gradients.dpo_beta
    out = []
    for ckpt in run.checkpoints():
        run.model.load_adapter(ckpt.adapter)
        with torch.no_grad():
            logps = np.array([[float(_own_logp(run.model.model, s)[0]) for s in pair] for pair in run.validation.encoded])
        own = 1 / (1 + np.exp(beta * ((logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1]))))
        out.append((np.load(run.dir / "grads/val" / ckpt.path.name / "dpo_weights.npy"), own))
    return out


def test_checkpoint_weights_lr_dpo_weigh_each_pair_by_its_dpo_sigmoid(variant):
    run = variant("lr_dpo", {"gradients.dpo_beta": 20.0}, checkpoint_weights="lr_dpo")  # the tiny warm-up moves margins by 0.01 nats: sigmoids apart
    sigmoids = []
    for stored, own in _stored_and_own_dpo_sigmoids(run):
        assert np.abs(stored - own).max() < 1e-4
        sigmoids.append(own)
    raw = _weights(run)[:, None] * np.stack(sigmoids)
    weights = raw / raw.sum(axis=0).mean()
    assert np.abs(weights - np.repeat(_weights(run)[:, None], 4, axis=1)).max() > 0.01  # the pairs' weights differ
    val = [_features(run, "val", c) for c in run.checkpoints()]
    assert np.abs(_stored(run, "per_pair.npy") - _by_definition(run, val, weights)).max() < 1e-4


def test_checkpoint_weights_lr_dpo_with_sides_apart_take_the_log_probs_of_the_two_sides_passes(variant):
    run = variant("lr_dpo-apart", {"gradients.dpo_beta": 20.0}, checkpoint_weights="lr_dpo", sides="apart")
    for stored, own in _stored_and_own_dpo_sigmoids(run):
        assert np.abs(stored - own).max() < 1e-4
        assert np.ptp(own) > 0.01  # chosen and rejected not swapped or mixed up between pairs


def test_checkpoint_weights_last_uses_the_last_checkpoint_alone(variant):
    run = variant("last", checkpoint_weights="last")
    val = [_features(run, "val", c) for c in run.checkpoints()]
    assert np.abs(_stored(run, "per_pair.npy") - _by_definition(run, val, np.array([[0.0] * 4, [1.0] * 4]))).max() < 1e-5
    assert json.loads((run.dir / "scores/scores.json").read_text())["checkpoint_weights"] == [0.0, 1.0]


def test_precondition_gist_scores_in_the_validation_features_top_subspace(variant):
    run = variant("gist", precondition="gist", gist_rank=2)
    sims = 0
    for ckpt, w in zip(run.checkpoints(), _weights(run)):
        val, train = _features(run, "val", ckpt), _features(run, "train", ckpt)
        top = np.linalg.svd(val)[2][:2].T  # [d, 2]
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
        sims = sims + w * unit(train @ top) @ unit(val @ top).T
    assert np.abs(_stored(run, "per_pair.npy") - sims).max() < 1e-4
    assert np.abs(sims - _stored(variant("paper", method="rose-paper"), "per_pair.npy")).max() > 0.05


def test_aggregation_options_max_over_shots_and_mean_over_subtasks(variant):
    run = variant("agg", over_shots="max", over_subtasks="mean")
    sims = _stored(variant("paper", method="rose-paper"), "per_pair.npy").astype(np.float64)  # the same similarities
    per_subtask = np.stack([sims[:, :2].max(1), sims[:, 2:].max(1)], 1)
    assert np.abs(_stored(run, "per_subtask.npy") - per_subtask).max() < 1e-5
    assert np.abs(_stored(run, "scores.npy") - per_subtask.mean(1)).max() < 1e-5


def _round_robin(columns: np.ndarray, k: int) -> list[int]:
    """Round-robin the plain way: columns in turn, each taking its best example not taken yet."""
    taken: list[int] = []
    for j in itertools.cycle(range(columns.shape[1])):
        if len(taken) == k:
            return taken
        free = [i for i in range(len(columns)) if i not in taken]
        taken.append(max(free, key=lambda i: (columns[i, j], -i)))


@pytest.mark.parametrize(("balance", "columns"), [("pairs", "per_pair.npy"), ("subtasks", "per_subtask.npy")])
def test_balanced_selection_takes_each_columns_next_best_in_turn(variant, balance, columns):
    run = variant(f"rr-{balance}", balance=balance)
    scores, k = _stored(run, "scores.npy"), round(0.125 * len(run.pool.records))
    assert _selected(run) == _round_robin(_stored(run, columns), k)
    assert set(_selected(run)) != set(np.argsort(-scores, kind="stable")[:k].tolist())  # not the top scores


def test_rds_plus_is_the_position_weighted_mean_of_the_base_models_last_hidden_states(variant):
    run = variant("rds", method="rds+")

    def embed(seq, position: bool) -> np.ndarray:
        with torch.no_grad(), run.model.model.disable_adapter():
            out = run.model.model(input_ids=torch.tensor([seq.input_ids]), output_hidden_states=True)
        hidden = out.hidden_states[-1][0].double()  # after the final norm, one sequence, no padding
        w = torch.arange(1, len(seq) + 1, dtype=torch.float64) if position else torch.ones(len(seq), dtype=torch.float64)
        pooled = (hidden * (w / w.sum())[:, None]).sum(0)
        return (pooled / pooled.norm()).numpy()

    pool, targets = run.pool.encoded, [chosen for chosen, _ in run.validation.encoded]
    for position in (True, False):
        own = np.array([[embed(p, position) @ embed(t, position) for t in targets] for p in pool[:6]])
        if position:
            assert np.abs(_stored(run, "per_pair.npy")[:6] - own).max() < 1e-4
        else:  # plain mean pooling (`embedding`) gives other similarities
            assert np.abs(_stored(run, "per_pair.npy")[:6] - own).max() > 1e-3
    sims = _stored(run, "per_pair.npy").astype(np.float64)
    per_subtask = np.stack([sims[:, :2].max(1), sims[:, 2:].max(1)], 1)  # RDS+'s max over each subtask's items
    assert np.abs(_stored(run, "per_subtask.npy") - per_subtask).max() < 1e-6
    assert _selected(run) == _round_robin(per_subtask, round(0.125 * len(pool)))  # and round-robin over subtasks


def test_hybrid_rank_averages_rose_and_rds_plus(variant):
    hybrid, rose = variant("hybrid", method="hybrid"), variant("paper", method="rose-paper")
    rds = variant("rds", method="rds+")
    rds_scores, _ = aggregate(_stored(rds, "per_pair.npy"), ["a", "a", "b", "b"])  # with the hybrid's own aggregation

    def ranks(x):
        order = np.lexsort((-np.arange(len(x)), x))
        r = np.empty(len(x))
        r[order] = np.arange(len(x)) / (len(x) - 1)
        return r

    expected = (ranks(_stored(rose, "scores.npy")) + ranks(rds_scores)) / 2
    assert np.abs(_stored(hybrid, "scores.npy") - expected).max() < 1e-9
    assert np.abs(_stored(hybrid, "scores.npy") - ranks(_stored(rose, "scores.npy"))).max() > 0.1  # not ROSE's ranks alone


def test_paper_options_leave_rose_papers_selection_as_before(variant, tiny_run):
    """The options change nothing when left at the paper's values: the same similarities as the
    finished run's (which has one subtask), so the same top scores."""
    run_dir = tiny_run[0]
    paper = variant("paper", method="rose-paper")
    same = np.load(run_dir / "scores/scores.npy")
    assert np.abs(_stored(paper, "per_pair.npy").mean(1) - same).max() < 1e-5
