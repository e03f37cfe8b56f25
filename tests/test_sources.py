"""Every input source and row shape: parquet, arrow, feather, save_to_disk folders and hub datasets
from a local cache (nothing downloads), read through the same per-row checks as JSON files."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import datasets.config
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.feather
import pyarrow.parquet
import pytest
from datasets.naming import camelcase_to_snakecase
from datasets.packaged_modules.parquet.parquet import Parquet

from rose import hub
from rose.config import load_config
from rose.errors import ConfigError, InputError
from rose.formats import read_pool, read_preferences, read_test_prompts
from rose.inputs import RunInputs
from rose.sources import iter_records, source_digest

USER, ASSISTANT = {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}
POOL = [{"dataset": "d", "id": f"d_{i}", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(4)]
TRL_PAIRS = [{"prompt": [{"role": "user", "content": f"p{i}"}], "chosen": [{"role": "assistant", "content": f"good {i}"}],
              "rejected": [{"role": "assistant", "content": f"bad {i}"}]} for i in range(3)]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _parquet(path, rows):
    pyarrow.parquet.write_table(pa.Table.from_pylist(rows), path)
    return path


def _messages(examples):
    return [list(e.messages) for e in examples]


# ----------------------------------------------------------------------------- local tables


def test_parquet_pool_matches_the_same_rows_as_jsonl(tmp_path):
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in POOL))
    from_json, from_parquet = read_pool([jsonl]), read_pool([_parquet(tmp_path / "pool.parquet", POOL)])
    assert _messages(from_parquet) == _messages(from_json)
    assert [(e.id, e.source, e.row) for e in from_parquet] == [(e.id, e.source, e.row) for e in from_json]
    assert str(from_parquet[2].origin) == f"{tmp_path / 'pool.parquet'}, row 2"


def test_a_bad_table_row_is_named_by_source_row_and_field(tmp_path):
    rows = [dict(r) for r in POOL]
    rows[3] = dict(rows[3], messages=[USER, {"role": "assistant", "content": "  "}])
    path = _parquet(tmp_path / "train.parquet", rows)
    with pytest.raises(InputError, match="empty text") as e:
        read_pool([path])
    assert (e.value.path, e.value.row, e.value.field) == (str(path), 3, "messages[1].content")
    assert "train.parquet, row 3, field 'messages[1].content'" in str(e.value)
    duplicate = _parquet(tmp_path / "dup.parquet", [POOL[0], POOL[1], POOL[0]])
    with pytest.raises(InputError, match=r"duplicate id 'd_0' \(first seen at .*dup.parquet, row 0\)") as e:
        read_pool([duplicate])
    assert e.value.row == 2


def test_arrow_stream_and_feather_files(tmp_path):
    table = pa.Table.from_pylist(TRL_PAIRS)
    stream = tmp_path / "prefs.arrow"  # the IPC stream format, as datasets writes .arrow files
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    feather = tmp_path / "prefs.feather"  # the IPC file format
    pyarrow.feather.write_feather(table, feather)
    for path in (stream, feather):
        pairs = read_preferences([path])
        assert [(p.prompt[0]["content"], p.chosen, p.rejected) for p in pairs] == [(f"p{i}", f"good {i}", f"bad {i}") for i in range(3)]
        assert pairs[0].subtask == "prefs"
    broken = tmp_path / "broken.arrow"
    broken.write_bytes(b"not arrow at all")
    with pytest.raises(InputError, match="cannot read file"):
        read_pool([broken])


def test_save_to_disk_folders(tmp_path):
    datasets.Dataset.from_list(TRL_PAIRS).save_to_disk(str(tmp_path / "prefs"))
    assert [p.chosen for p in read_preferences([tmp_path / "prefs"])] == ["good 0", "good 1", "good 2"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(POOL)}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(InputError, match=r"a DatasetDict folder \(splits: train\); give one split's folder"):
        read_pool([tmp_path / "dict"])
    assert [e.id for e in read_pool([tmp_path / "dict" / "train"])] == [r["id"] for r in POOL]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a dataset folder written by save_to_disk"):
        read_pool([tmp_path / "empty"])
    with pytest.raises(InputError, match="file or folder not found"):
        read_pool([tmp_path / "missing"])


def test_test_prompts_from_parquet(tmp_path):
    path = _parquet(tmp_path / "askscience.parquet", [{"prompt": "Why is the sky blue?", "golden_answer": "Scattering."}])
    (item,) = read_test_prompts([path])
    assert (item.subtask, item.golden, item.prompt) == ("askscience", "Scattering.", ({"role": "user", "content": "Why is the sky blue?"},))


def test_source_digest_follows_the_rows(tmp_path):
    path = _parquet(tmp_path / "pool.parquet", POOL)
    datasets.Dataset.from_list(POOL).save_to_disk(str(tmp_path / "saved"))
    before = source_digest(path), source_digest(tmp_path / "saved")
    _parquet(path, POOL[:3])
    datasets.Dataset.from_list(POOL[:3]).save_to_disk(str(tmp_path / "saved"))
    after = source_digest(path), source_digest(tmp_path / "saved")
    assert before[0] != after[0] and before[1] != after[1]


# ----------------------------------------------------------------------------- row shapes


def test_trl_prompt_completion_rows_strings_and_messages(tmp_path):
    rows = [{"prompt": "Name a colour.", "completion": "Blue."},
            {"prompt": [{"role": "system", "content": "Be brief."}, USER], "completion": [ASSISTANT]},
            {"prompt": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: Name a colour.\n\nAssistant:", "completion": "Blue."}]
    pool = read_pool([_parquet(tmp_path / "pc.parquet", [rows[0], rows[2]]), _parquet(tmp_path / "chat.parquet", [rows[1]])])
    assert _messages(pool) == [
        [USER, ASSISTANT],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, USER, ASSISTANT],
        [{"role": "system", "content": "Be brief."}, USER, ASSISTANT],
    ]
    assert [e.id for e in pool] == ["pc_0", "pc_1", "chat_0"] and pool[2].row == rows[1]


def test_text_rows_with_a_response_template_and_renamed_columns(tmp_path):
    rows = [{"body": "### Human: Name a colour. ### Assistant: Blue.", "key": "x1"},
            {"body": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: Name a colour.\n\nAssistant: Blue.", "key": "x2"}]
    path = _parquet(tmp_path / "text.parquet", rows)
    pool = read_pool([path], {"text": "body", "id": "key"}, "Assistant:")
    assert [e.id for e in pool] == ["x1", "x2"]
    assert _messages(pool)[0] == [{"role": "user", "content": "### Human: Name a colour. ###"}, ASSISTANT]
    assert _messages(pool)[1] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, USER, ASSISTANT]
    with pytest.raises(InputError, match="a text row needs data.response_template") as e:
        read_pool([path], {"text": "body"})
    assert (e.value.row, e.value.field) == (0, "body")
    with pytest.raises(InputError, match="no response marker") as e:
        read_pool([path], {"text": "body"}, "### Answer:")
    renamed = _parquet(tmp_path / "alpaca.parquet", [{"instruction": "Name a colour.", "output": "Blue."}, {"instruction": "Go", "output": ""}])
    with pytest.raises(InputError, match="empty text") as e:
        read_pool([renamed], {"prompt": "instruction", "completion": "output"})
    assert (e.value.row, e.value.field) == (1, "output")
    with pytest.raises(InputError, match="a pool row needs 'messages', 'prompt' and 'completion', or 'text'"):
        read_pool([renamed])


def test_preference_columns_are_renamed_and_named_in_errors(tmp_path):
    rows = [{"question": "q1", "good": "a", "bad": "b"}, {"question": "q2", "good": "c", "bad": ""}]
    path = _parquet(tmp_path / "prefs.parquet", rows)
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    with pytest.raises(InputError, match="empty response") as e:
        read_preferences([path], columns=columns)
    assert (e.value.row, e.value.field) == (1, "bad")
    assert [(p.prompt[0]["content"], p.chosen) for p in read_preferences([path], empty="skip", columns=columns)] == [("q1", "a")]


# ----------------------------------------------------------------------------- hub datasets


def _cache_hub_dataset(cache, repo: str, rows: list[dict], commit: str = COMMIT, split: str = "train"):
    """Leave in `cache` what `load_dataset(repo, split=split)` leaves after a download of `commit`
    (owner___name/default/0.0.0/<commit>/<name>-<split>.arrow and dataset_info.json), built from a local file."""
    owner, name = repo.split("/")
    source = _parquet(cache.parent / f"{name}-{commit[:6]}.parquet", rows)
    build = cache.parent / "build"
    builder = Parquet(cache_dir=str(build), dataset_name=camelcase_to_snakecase(name), config_name="default",
                      config_id="default", hash=commit, data_files={split: [str(source)]})
    builder.download_and_prepare()
    target = cache / f"{owner}___{camelcase_to_snakecase(name)}" / "default" / "0.0.0"
    target.mkdir(parents=True, exist_ok=True)
    (build / camelcase_to_snakecase(name) / "default" / "0.0.0" / commit).rename(target / commit)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty datasets cache and hub cache under tmp_path, and a hub endpoint that refuses connections."""
    cache = tmp_path / "hf" / "datasets"
    cache.mkdir(parents=True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub.load_split.cache_clear()
    yield cache
    hub.load_split.cache_clear()


def test_hub_dataset_from_the_local_cache_without_network(hub_cache):
    _cache_hub_dataset(hub_cache, "rose-tests/TinyPool", POOL)
    pool = read_pool(["hf://rose-tests/TinyPool:train"])
    assert [(e.id, e.source) for e in pool] == [(r["id"], "d") for r in POOL]
    assert str(pool[1].origin) == "hf://rose-tests/TinyPool:train, row 1"
    assert read_pool([f"hf://rose-tests/TinyPool@{COMMIT}"])[0].row == POOL[0]  # the split defaults to train
    assert [e.id for e in read_pool(["hf://rose-tests/TinyPool:train[1:3]"])] == ["d_1", "d_2"]
    assert source_digest("hf://rose-tests/TinyPool:train") != source_digest("hf://rose-tests/TinyPool:train[1:3]")


def test_hub_dataset_offline_by_environment_reads_the_same_rows(hub_cache, monkeypatch):
    _cache_hub_dataset(hub_cache, "rose-tests/TinyPrefs", TRL_PAIRS)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    pairs = read_preferences(["hf://rose-tests/TinyPrefs:train"])
    assert [p.chosen for p in pairs] == ["good 0", "good 1", "good 2"] and pairs[0].subtask == "TinyPrefs"


def test_hub_dataset_not_cached_fails_with_a_hint(hub_cache):
    with pytest.raises(InputError) as e:
        read_pool(["hf://rose-tests/Nowhere:train"])
    message = str(e.value)
    assert message.startswith("hf://rose-tests/Nowhere:train: not in the local Hugging Face cache") and "\n" not in message
    assert f"the hub ({huggingface_hub.constants.ENDPOINT}) cannot be reached" in message
    assert "datasets.load_dataset('rose-tests/Nowhere', split='train')" in message


def test_hub_revision_is_checked_against_the_cached_commit_offline(hub_cache):
    _cache_hub_dataset(hub_cache, "rose-tests/TinyPool", POOL)
    other = "f" * 40
    with pytest.raises(InputError, match=f"the cached copy is commit {COMMIT}, not {other}"):
        read_pool([f"hf://rose-tests/TinyPool@{other}:train"])
    with pytest.raises(InputError, match="the commit of revision 'v1' is unknown; pin the commit"):
        read_pool(["hf://rose-tests/TinyPool@v1:train"])
    refs = Path(huggingface_hub.constants.HF_HUB_CACHE) / "datasets--rose-tests--TinyPool" / "refs"
    refs.mkdir(parents=True)
    (refs / "v1").write_text(COMMIT)  # what huggingface_hub records when it resolves a revision
    assert len(read_pool(["hf://rose-tests/TinyPool@v1:train"])) == len(POOL)


def test_hub_specs_in_configs(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("data:\n  pool: [hf://rose-tests/TinyPool@main:train, pool.parquet]\n")
    config = load_config(config_file)
    assert config.data.pool == ["hf://rose-tests/TinyPool@main:train", str(tmp_path / "pool.parquet")]
    with pytest.raises(ConfigError, match=r"data.pool\[0\]: hf://TinyPool: not a hub dataset; expected hf://OWNER/NAME"):
        load_config(None, ["data.pool=[hf://TinyPool]"])


# ----------------------------------------------------------------------------- a run's inputs


def test_run_inputs_read_tables_with_the_configured_columns(tmp_path):
    pool = _parquet(tmp_path / "pool.parquet", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)])
    prefs = _parquet(tmp_path / "val.parquet", [{"question": "q", "good": "a", "bad": "b"}])
    config = load_config(None, [f"data.pool=[{pool}]", "data.columns={prompt: instruction, completion: output}",
                                f"data.validation.paths=[{prefs}]", "data.validation.columns={prompt: question, chosen: good, rejected: bad}"])
    inputs = RunInputs(config)
    assert [e.messages[-1]["content"] for e in inputs.pool] == ["a0", "a1", "a2", "a3"]
    assert [(p.chosen, p.rejected) for p in inputs.validation] == [("a", "b")]


def test_reading_json_inputs_imports_neither_torch_nor_datasets(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps(POOL[0]) + "\n")
    code = (f"import sys, rose, rose.inputs, rose.formats; rose.formats.read_pool([{str(path)!r}]); "
            "print(sorted(m for m in ('torch', 'datasets', 'pyarrow') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_iter_records_of_an_unknown_file_type(tmp_path):
    with pytest.raises(InputError, match="unsupported file type"):
        list(iter_records(tmp_path / "pool.csv"))
