"""Readers of every supported format, on the real data bundle and on hand-written bad rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import needs_data

from rose.errors import InputError
from rose.formats import Origin, parse_transcript, read_pool, read_preferences, read_test_prompts


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"dataset": "d", "id": "d_0", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@needs_data
def test_real_pool_counts_and_sources(shared):
    pool = read_pool([shared / "train/dolly/dolly_data.jsonl.gz", shared / "train/cot/cot_data.jsonl.gz"])
    assert len(pool) == 5252 + 14316
    assert {e.source for e in pool} == {"dolly", "cot"}
    assert pool[0].id == "dolly_0" and pool[0].messages[-1]["role"] == "assistant"
    assert pool[0].row["messages"] == list(pool[0].messages)


@needs_data
def test_rose_preference_file_target_and_all_pairs(shared):
    path = shared / "validation/shp/shp_5_shot/shp_5_shot_preference.json.gz"
    target = read_preferences([path], "auto", "target", subtasks=18)
    assert len(target) == 90
    assert len({p.subtask for p in target}) == 18
    assert [p.subtask for p in target[:6]] == ["block00"] * 5 + ["block01"]
    raw = json.load(gzip.open(path, "rt", encoding="utf-8"))
    first = next(iter(raw.values()))
    assert target[0].chosen == first["sft_target"].strip() and target[0].rejected == first["rejected_target"].strip()
    assert target[0].prompt[-1]["role"] == "user" and "Human:" not in target[0].prompt[-1]["content"]
    every = read_preferences([path], "rose", "all", subtasks=18)
    assert len(every) == 357 and len({p.subtask for p in every}) == 18
    assert {p.subtask for p in every if p.prompt == target[5].prompt} == {"block01"}  # a prompt's pairs share its block


@needs_data
def test_hh_transcripts_and_multi_turn_prompts(shared):
    path = shared / "test/hh_pairs/harmless-base-test.jsonl.gz"
    with pytest.raises(InputError, match="empty response") as e:
        read_preferences([path], "hh")
    assert e.value.line == 87 and e.value.field == "chosen"
    pairs = read_preferences([path], "hh", "all", "file", empty="skip")
    assert len(pairs) == 2312 - 4
    assert all(p.prompt[-1]["role"] == "user" for p in pairs)
    assert max(len(p.prompt) for p in pairs) > 1  # multi-turn dialogues keep their turns
    hh5 = read_preferences([shared / "validation/hh/hh_5_shot/hh_5_shot_preference.json.gz"], "rose", "target", 2)
    assert [p.subtask for p in hh5] == ["block00"] * 5 + ["block01"] * 5
    with pytest.raises(InputError, match="3 subtask names for 2 blocks"):
        read_preferences([shared / "validation/hh/hh_5_shot/hh_5_shot_preference.json.gz"], "rose", "target", 2, subtask_names=["a", "b", "c"])


@needs_data
def test_the_shp_config_names_each_block_after_its_subreddit(shared):
    """SHP's files carry no subreddit: the config names the 18 blocks in the test files' (alphabetical)
    order, and the prompts of the blocks whose subreddit shows in the text agree."""
    from rose.config import expand_globs, load_config
    from rose.inputs import RunInputs

    config = load_config(Path(__file__).parents[1] / "configs/shp.yaml")
    tests = expand_globs(config.data.test)
    if not Path(tests[0]).is_file():
        pytest.skip("configs/shp.yaml reads the data bundle beside the checkout")
    names = config.data.validation.subtask_names
    assert names == [Path(p).name.removeprefix("shp_").removesuffix(".json.gz") for p in tests]
    inputs = RunInputs(config)
    for pairs in (inputs.validation, inputs.heldout):
        by_name: dict[str, list[str]] = {}
        for p in pairs:
            by_name.setdefault(p.subtask, []).append(p.prompt[-1]["content"])
        assert list(by_name) == names
        assert all(t.lower().startswith(("explain like i'm five", "eli5")) for t in by_name["explainlikeimfive"])
        assert all(t.lower().startswith(("cmv", "change my view")) for t in by_name["changemyview"])


@needs_data
def test_test_prompts_subtask_is_file(shared):
    items = read_test_prompts(sorted((shared / "test/shp").glob("*.json.gz"))[:2])
    assert {t.subtask for t in items} == {"shp_askacademia", "shp_askanthropology"}
    assert len(items) == 99 + 34


def test_trl_rows_string_and_conversational(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "subtask": "greet"},
        {"prompt": [{"role": "user", "content": "Say hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Go away"}], "subtask": "greet"},
    ])
    pairs = read_preferences([path], "auto", subtasks="field")
    assert [(p.chosen, p.rejected, p.subtask) for p in pairs] == [("Hi!", "No.", "greet"), ("Hello", "Go away", "greet")]
    assert pairs[0].prompt == ({"role": "user", "content": "Say hi"},)


def test_parse_transcript_turns():
    text = "\n\nHuman: a?\n\nAssistant: b.\n\nHuman: c?\n\nAssistant:"
    assert parse_transcript(text, Origin("x"), "prompt") == (
        {"role": "user", "content": "a?"}, {"role": "assistant", "content": "b."}, {"role": "user", "content": "c?"})


BAD_POOL_ROWS = [
    ('{"dataset": "d", "id": "x", "messages": [', 1, None, "malformed JSON"),
    ({"dataset": "d", "id": "x"}, 1, "messages", "missing field"),
    ({"dataset": "d", "id": "x", "messages": "hi"}, 1, "messages", "expected list"),
    ({"dataset": "d", "id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}, 1, "messages[1].content", "empty text"),
    ({"dataset": "d", "id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]}, 1, "messages[1].content", "expected str"),
    ({"dataset": "d", "id": "x", "messages": [{"role": "bot", "content": "q"}]}, 1, "messages[0].role", "unknown role"),
    ({"dataset": "d", "id": "x", "messages": [{"role": "user", "content": "q"}]}, 1, "messages", "assistant's response"),
]


@pytest.mark.parametrize("row,line,field,message", BAD_POOL_ROWS)
def test_bad_pool_row_names_file_line_field(tmp_path, row, line, field, message):
    path = _jsonl(tmp_path / "pool.jsonl", [row, GOOD])
    with pytest.raises(InputError) as e:
        read_pool([path])
    assert e.value.path == str(path) and e.value.line == line and e.value.field == field
    assert message in str(e.value) and str(path) in str(e.value)


def test_bad_bytes_duplicates_and_missing_file(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"messages": "\xff\xfe"}\n')
    with pytest.raises(InputError, match="UTF-8") as e:
        read_pool([path])
    assert e.value.line == 2
    dup = _jsonl(tmp_path / "dup.jsonl", [GOOD, GOOD])
    with pytest.raises(InputError, match="duplicate id 'd_0'") as e:
        read_pool([dup])
    assert e.value.line == 2 and e.value.field == "id"
    with pytest.raises(InputError, match="file not found"):
        read_pool([tmp_path / "nope.jsonl.gz"])


def test_gzipped_jsonl_and_json_list(tmp_path):
    gz = tmp_path / "pool.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps(GOOD) + "\n")
    lst = tmp_path / "pool.json"
    lst.write_text(json.dumps([dict(GOOD, id="d_1")]))
    assert [e.id for e in read_pool([gz, lst])] == ["d_0", "d_1"]


def test_bad_preferences(tmp_path):
    empty = _jsonl(tmp_path / "e.jsonl", [{"prompt": "q", "chosen": "", "rejected": "r"}])
    with pytest.raises(InputError, match="empty response") as e:
        read_preferences([empty], "trl")
    assert e.value.field == "chosen" and e.value.line == 1
    mismatch = _jsonl(tmp_path / "h.jsonl", [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: c"}])
    with pytest.raises(InputError, match="share no") as e:
        read_preferences([mismatch], "hh")
    assert e.value.line == 1
    nothing = _jsonl(tmp_path / "n.jsonl", [])
    with pytest.raises(InputError, match="empty preference file"):
        read_preferences([nothing])
    good = _jsonl(tmp_path / "g.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 3)
    with pytest.raises(InputError, match="3 prompts cannot be split into 2 equal subtask blocks"):
        read_preferences([good], "trl", subtasks=2)


def _corrupt_gzip(path, rows) -> None:
    """A gzip file whose header is fine but whose deflate stream is damaged (not merely cut short)."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    data = bytearray(path.read_bytes())
    data[12:24] = b"\xff" * 12
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["lone surrogate", "deep nesting", "corrupt gzip", "deep nesting .json"])
def test_unusable_documents_are_input_errors(tmp_path, case):
    """Valid JSON that is no Unicode text, nesting deep enough to exhaust the parser, and damaged
    gzip data each end as an InputError naming the file (and line), never as another exception."""
    if case == "lone surrogate":
        path = tmp_path / "pool.jsonl"
        path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD).replace("hello", "\\ud800x").replace("d_0", "d_1") + "\n")
        line, message = 2, "not valid Unicode"
    elif case == "deep nesting":
        path = tmp_path / "pool.jsonl"
        path.write_text(json.dumps(GOOD) + "\n" + "[" * 200_000 + "]" * 200_000 + "\n")
        line, message = 2, "nested too deeply"
    elif case == "deep nesting .json":
        path = tmp_path / "pool.json"
        path.write_text("[" * 200_000 + "]" * 200_000)
        line, message = None, "nested too deeply"
    else:
        path = tmp_path / "pool.jsonl.gz"
        _corrupt_gzip(path, [GOOD] * 50)
        line, message = None, "cannot read file"
    with pytest.raises(InputError, match=message) as e:
        read_pool([path])
    assert e.value.path == str(path) and e.value.line == line
    assert "\n" not in str(e.value)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    jsonl, whole = tmp_path / "pool.jsonl", tmp_path / "prefs.json"
    jsonl.write_bytes(bom + (json.dumps(GOOD) + "\n").encode())
    whole.write_bytes(bom + json.dumps([{"prompt": "q", "chosen": "a", "rejected": "b"}]).encode())
    assert [e.id for e in read_pool([jsonl])] == ["d_0"]
    assert [(p.chosen, p.rejected) for p in read_preferences([whole])] == [("a", "b")]


def test_identical_pairs_are_dropped_with_a_warning_and_a_set_of_only_those_is_refused(tmp_path, caplog):
    rows = [{"prompt": "q1", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": " same", "rejected": "same "},
            {"prompt": "q3", "chosen": "c", "rejected": "d"}]
    path = _jsonl(tmp_path / "p.jsonl", rows)
    with caplog.at_level("WARNING", logger="rose"):
        pairs = read_preferences([path])
    assert [p.prompt[0]["content"] for p in pairs] == ["q1", "q3"]
    assert "dropped 1 preference pair(s)" in caplog.text and f"{path}, line 2" in caplog.text
    only = _jsonl(tmp_path / "only.jsonl", [rows[1], rows[1]])
    with pytest.raises(InputError, match="all 2 pairs have identical chosen and rejected") as e:
        read_preferences([only])
    assert e.value.line == 1 and e.value.field == "rejected"


def test_subtask_blocks_are_file_positions_even_for_dropped_pairs_and_alike_prompts(tmp_path, caplog):
    """HH's 10- and 20-shot sets (two blocks) hold a pair with identical responses, and four of the
    20-shot prompts share their first 60 characters: neither may move the block boundaries."""
    stem = "\n\nHuman: I like to host guests at my home from time to time, and I am gathering recipes. "
    prompts = [stem + "Soup?\n\nAssistant:", stem + "Stew?\n\nAssistant:", "\n\nHuman: Steal?\n\nAssistant:",
               "\n\nHuman: Carrots?\n\nAssistant:"]
    responses = [(" a", " b"), (" c", " d"), (" e", " f"), (" same", " same")]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps({p: {"sft_target": c, "rejected_target": r} for p, (c, r) in zip(prompts, responses)}))
    with caplog.at_level("WARNING", logger="rose"):
        pairs = read_preferences([path], "rose", subtasks=2, subtask_names=["harmless", "helpful"])
    assert [(p.prompt[-1]["content"], p.subtask) for p in pairs] == [
        (prompts[0].split("Human: ")[1].split("\n")[0], "harmless"), (prompts[1].split("Human: ")[1].split("\n")[0], "harmless"),
        ("Steal?", "helpful")]
    assert "Human: Carrots? Assistant:" in caplog.text  # the dropped pair's entry, named in one short line
    long = tmp_path / "long.json"
    long.write_text(json.dumps({stem * 3 + "Soup?\n\nAssistant:": {"sft_target": "", "rejected_target": " b"}}))
    with pytest.raises(InputError, match="empty response") as e:
        read_preferences([long], "rose")
    assert e.value.entry.endswith("Soup?\n\nAssistant:") and len(str(e.value)) < len(str(long)) + 120
