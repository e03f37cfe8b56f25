"""The files a selection is written as: the pool's own format (jsonl, parquet, a save_to_disk folder),
TRL prompt/completion rows that SFTTrainer masks exactly as rose trains, and the ranked score table."""

from __future__ import annotations

import json
import logging

import datasets
import datasets.config
import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet
import pytest
from conftest import tiny_config, tiny_llama

from rose.encoding import collate, encode_example
from rose.errors import RunDirError
from rose.exports import score_table, write_exports
from rose.formats import read_pool
from rose.pipeline import run_stages
from rose.selection import top_fraction
from rose.store import save_array, write_json

SUBTASKS = ["askscience", "score", "askhistory"]  # "score" collides with a fixed column of the table


def _score_dir(folder, pool, subtasks=SUBTASKS, method="rose", seed=0):
    """What the score stage writes: scores.npy [N], per_subtask.npy [N, S], scores.json (ids, subtask names)."""
    rng = np.random.default_rng(seed)
    per_subtask = rng.normal(size=(len(pool), len(subtasks))).round(1).astype(np.float32)  # rounded: ties happen
    save_array(folder / "scores.npy", per_subtask.max(axis=1))
    save_array(folder / "per_subtask.npy", per_subtask)
    write_json(folder / "scores.json", {"method": method, "ids": [e.id for e in pool], "subtasks": subtasks})
    return folder


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_file_of_a_selection(demo_files, tmp_path):
    pool = read_pool([demo_files["pool"]])
    scores_dir = _score_dir(tmp_path, pool)
    scores, per_subtask = np.load(scores_dir / "scores.npy"), np.load(scores_dir / "per_subtask.npy")
    chosen = top_fraction(scores, 0.2)
    out = tmp_path / "selection"
    info = write_exports(out, pool, chosen, scores_dir)
    rows = [pool[i].row for i in chosen]
    assert info["n_selected"] == len(chosen) and info["method"] == "rose"
    assert _lines(out / "selected.jsonl") == rows
    assert pyarrow.parquet.read_table(out / "selected.parquet").to_pylist() == rows
    assert datasets.load_from_disk(str(out / "selected")).to_list() == rows
    assert _lines(out / "sft.jsonl") == [
        {"id": pool[i].id, "prompt": list(pool[i].messages[:-1]), "completion": [pool[i].messages[-1]]} for i in chosen]

    ranked = pyarrow.parquet.read_table(out / "scores.parquet")
    assert ranked.column_names == ["rank", "id", "source", "score", "askscience", "subtask:score", "askhistory"]
    order = top_fraction(scores, 1.0)
    assert ranked["rank"].to_pylist() == list(range(1, len(pool) + 1))
    assert ranked["id"].to_pylist() == [pool[i].id for i in order]
    assert ranked["id"].to_pylist()[: len(chosen)] == [pool[i].id for i in chosen]  # the selection is the top rows
    assert ranked["source"].to_pylist() == [pool[i].source for i in order]
    assert np.array_equal(ranked["score"].to_numpy(), scores[order])
    assert np.array_equal(ranked["subtask:score"].to_numpy(), per_subtask[order, 1])
    as_csv = pyarrow.csv.read_csv(out / "scores.csv")
    assert as_csv.column_names == ranked.column_names and as_csv["id"].to_pylist() == ranked["id"].to_pylist()
    assert np.array_equal(as_csv["askhistory"].to_numpy().astype(np.float32), per_subtask[order, 2])


def test_subtask_columns_are_named_in_the_validation_sets_first_seen_order(tmp_path, demo_files):
    """The score stage, through a method's per-pair similarities (bm25: no model), to the exported table:
    validation subtasks whose first-seen order is not alphabetical keep that order as columns, and
    each column holds the mean over its own subtask's pairs (a sorted order would swap the labels)."""
    config = tiny_config(tmp_path / "run", demo_files, **{"select.method": "bm25", "data.validation.subtasks": 2,
                                                         "data.validation.subtask_names": "[zeta, alpha]"})
    run = run_stages(config, ["score", "select"])
    subtasks = [p.subtask for p in run.validation.records]
    assert subtasks == ["zeta", "zeta", "alpha", "alpha"]
    scores_dir = tmp_path / "run/scores"
    assert json.loads((scores_dir / "scores.json").read_text())["subtasks"] == ["zeta", "alpha"]
    per_pair = np.load(scores_dir / "per_pair.npy").astype(np.float64)
    by_hand = {name: per_pair[:, [j for j, s in enumerate(subtasks) if s == name]].mean(axis=1) for name in ("zeta", "alpha")}
    assert not np.allclose(by_hand["zeta"], by_hand["alpha"], atol=1e-3)  # the columns can be told apart
    per_subtask = np.load(scores_dir / "per_subtask.npy")
    assert np.allclose(per_subtask, np.stack([by_hand["zeta"], by_hand["alpha"]], axis=1), atol=1e-5)
    ranked = pyarrow.parquet.read_table(tmp_path / "run/selection/scores.parquet")
    assert ranked.column_names == ["rank", "id", "source", "score", "zeta", "alpha"]
    order = [{e.id: i for i, e in enumerate(run.pool.records)}[i] for i in ranked["id"].to_pylist()]
    for name in ("zeta", "alpha"):
        assert np.allclose(ranked[name].to_numpy(), by_hand[name][order], atol=1e-5)
    as_csv = pyarrow.csv.read_csv(tmp_path / "run/selection/scores.csv")
    assert as_csv.column_names == ranked.column_names
    assert np.allclose(as_csv["zeta"].to_numpy(), by_hand["zeta"][order], atol=1e-5)


def test_a_parquet_pool_is_exported_in_its_own_schema(tmp_path):
    rows = [{"key": f"k{i}", "meta": {"lang": "en", "turns": i}, "prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    source = pa.Table.from_pylist(rows)
    pyarrow.parquet.write_table(source, tmp_path / "pool.parquet")
    pool = read_pool([tmp_path / "pool.parquet"], {"id": "key"})
    chosen = np.array([3, 0])
    write_exports(tmp_path / "out", pool, chosen, _score_dir(tmp_path, pool, ["all"]))
    selected = pyarrow.parquet.read_table(tmp_path / "out" / "selected.parquet")
    assert selected.schema == source.schema and selected.to_pylist() == [rows[3], rows[0]]
    assert _lines(tmp_path / "out" / "sft.jsonl")[0] == {
        "id": "k3", "prompt": [{"role": "user", "content": "q3"}], "completion": [{"role": "assistant", "content": "a3"}]}


def test_a_column_of_mixed_types_is_written_as_json_text(tmp_path, caplog):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [{"id": 7, "messages": messages}, {"id": "x8", "messages": messages}]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = read_pool([tmp_path / "pool.jsonl"])
    with caplog.at_level(logging.WARNING, logger="rose"):
        write_exports(tmp_path / "out", pool, np.array([0, 1]), _score_dir(tmp_path, pool, ["all"]))
    assert "column(s) id hold values of several types" in caplog.text
    assert pyarrow.parquet.read_table(tmp_path / "out" / "selected.parquet")["id"].to_pylist() == ["7", '"x8"']
    assert _lines(tmp_path / "out" / "selected.jsonl") == rows


def test_scores_of_another_pool_are_refused(demo_files, tmp_path):
    pool = read_pool([demo_files["pool"]])
    scores_dir = _score_dir(tmp_path, pool[:-1])
    with pytest.raises(RunDirError, match="the scores belong to another pool"):
        score_table(scores_dir, pool)


def test_trl_sft_trainer_masks_exactly_the_tokens_rose_trains_on(tokenizer, demo_files, tmp_path, monkeypatch):
    """TRL's own data preparation and collator, on the real SmolLM2 tokenizer, against rose's loss
    positions (the response tokens of encode_example): same token ids, same labels."""
    from trl import SFTConfig, SFTTrainer

    extra = [
        {"id": "sys", "messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Sky colour?"},
                                   {"role": "assistant", "content": "Blue"}]},
        {"id": "turns", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                                     {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": " six, of course.\n"}]},
        {"id": "text", "text": "### Human: Name a colour.\n### Assistant: Red."},
    ]
    (tmp_path / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in extra))
    pool = read_pool([demo_files["pool"], tmp_path / "extra.jsonl"], response_template="### Assistant:")
    chosen = np.array([len(pool) - 3, len(pool) - 2, len(pool) - 1, 0, 1, 2])
    write_exports(tmp_path / "out", pool, chosen, _score_dir(tmp_path, pool, ["all"]))

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    train = datasets.load_dataset("json", data_files=str(tmp_path / "out" / "sft.jsonl"), split="train")
    args = SFTConfig(output_dir=str(tmp_path / "sft"), use_cpu=True, bf16=False, report_to="none")
    trainer = SFTTrainer(model=tiny_llama(len(tokenizer)), args=args, train_dataset=train, processing_class=tokenizer)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(chosen))])
    ours = collate([encode_example(tokenizer, pool[i], 512) for i in chosen], tokenizer.pad_token_id)
    assert theirs["input_ids"].shape == ours["input_ids"].shape
    assert theirs["attention_mask"].tolist() == ours["attention_mask"].tolist()
    real = ours["attention_mask"].bool()
    assert theirs["input_ids"][real].tolist() == ours["input_ids"][real].tolist()
    assert theirs["labels"].tolist() == ours["labels"].tolist()
    assert all((row != -100).any() for row in ours["labels"])
