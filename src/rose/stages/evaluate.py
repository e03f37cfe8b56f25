"""evaluate: held-out preference accuracy, reward margin, length-normalised preference, validation
DPO loss and golden-answer NLL of the fine-tuned adapter, against the base model's log-probs
(and an LLM judge's win rate, if enabled)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from . import Stage, register_stage, work
from .base_logprobs import read_base_logprobs, response_logprobs_of, sequences_of

if TYPE_CHECKING:
    from ..context import Run
    from ..store import StageDir


HELDOUT_CORRECT = "heldout_correct.npy"  # per held-out pair: 1 right, 0.5 tie, 0 wrong (`evaluate.pair_correctness`)


def evaluate(run: Run, sd: StageDir) -> dict:
    import numpy as np

    from ..evaluate import dpo_loss, golden_nll, pair_correctness, preference_metrics
    from ..store import write_json

    tune = run.require("finetune")
    run.model.load_adapter(tune.path / tune.manifest()["adapter"])
    metrics: dict = {}
    correct = None  # no held-out pairs: none
    for name, (logps, counts) in response_logprobs_of(run, ("heldout", "validation", "tests")).items():
        base = read_base_logprobs(run, name)
        if name == "heldout":
            metrics.update(asdict(preference_metrics(logps, base, counts, [p.subtask for p in run.heldout.records])))
            correct = pair_correctness(logps, base)  # in the held-out set's order, the same in every variant of a task
        elif name == "validation":
            metrics["val_dpo_loss"] = dpo_loss(logps, base, run.config.gradients.dpo_beta)
        else:
            subtasks = [t.subtask for t in run.tests.records]
            metrics.update(asdict(golden_nll(logps, counts, subtasks)))
            metrics["base_golden_nll"] = golden_nll(base, counts, subtasks).golden_nll
    if run.config.eval.judge.enabled:
        metrics.update(_judge(run, sd))
    if run.dist.is_main:  # a sharded model's processes all compute them (`Stage.on_every_process`)
        write_json(sd.path / "metrics.json", metrics)
        if correct is not None:
            np.save(sd.path / HELDOUT_CORRECT, correct)
    sets = [name for name in ("heldout", "validation", "tests") if getattr(run, name).encoded]
    return {**{k: v for k, v in metrics.items() if not isinstance(v, dict)},
            **work(sum(len(getattr(run, name).encoded) for name in sets), sequences_of(run, sets))}


def _judge(run: Run, sd: StageDir) -> dict:
    """LLM-judge win rate of the fine-tuned model's answers against the golden answers."""
    from ..formats import write_jsonl
    from ..inputs import sample_indices
    from ..judge import generate_answers, make_client, question_text, win_rate

    settings = run.config.eval.judge
    tests = run.tests.records
    tests = [tests[i] for i in sample_indices(len(tests), settings.max_prompts, run.config.seed + 4)]
    client = make_client(settings) if run.dist.is_main else None  # fails early, before generating, when no key is set
    answers = generate_answers(run.model.model, run.model.tokenizer, [t.prompt for t in tests], settings.max_new_tokens,
                               run.device, run.config.eval.batch_size)
    if client is None:  # a sharded model's processes all generate; the main process judges
        return {}
    write_jsonl(sd.path / "judge_answers.jsonl", [{"id": t.id, "answer": a, "golden": t.golden} for t, a in zip(tests, answers)])
    result = win_rate(client, settings.model, [(question_text(t.prompt), a, t.golden) for t, a in zip(tests, answers)])
    return {f"judge_{k}": v for k, v in asdict(result).items()}


register_stage(Stage(
    "evaluate", "eval", "Held-out preference accuracy, reward margin and golden-answer NLL of the fine-tuned model.",
    evaluate, key=lambda k: [k.stage("finetune"), k.stage("base-logprobs"), k.config.gradients.dpo_beta, asdict(k.config.eval.judge)],
    after=("finetune", "base-logprobs"), reads=frozenset({"validation", "heldout", "tests"})))
