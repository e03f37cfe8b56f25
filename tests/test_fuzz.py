"""Property-based fuzzing of the input readers: whatever the bytes or JSON structure, a reader either
returns records that are valid Unicode text or raises the project's InputError (one line, naming
the file), never anything else.

Hypothesis runs derandomized (a fixed sequence of cases) so the suite is repeatable.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rose.errors import InputError
from rose.formats import read_pool, read_preferences, read_test_prompts

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

READERS = [
    lambda p: read_pool([p]),
    lambda p: read_preferences([p], "auto", "target", "file"),
    lambda p: read_preferences([p], "rose", "all", 2),
    lambda p: read_preferences([p], "trl", "target", "field", "skip"),
    lambda p: read_preferences([p], "hh", "all", "none"),
    lambda p: read_test_prompts([p], "skip"),
]
SUFFIXES = [".jsonl", ".json", ".jsonl.gz", ".json.gz"]

# JSON built from the field names and shapes the readers look for, so the fuzzer reaches deep checks
KEYS = st.sampled_from(["messages", "role", "content", "id", "dataset", "prompt", "chosen", "rejected", "subtask",
                        "responses", "pairs", "sft_target", "rejected_target", "golden_answer", "user", "assistant"])
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=12) \
    | st.sampled_from(["user", "assistant", "system", "\n\nHuman: hi\n\nAssistant:", "\n\nHuman: hi\n\nAssistant: yo", "\ud800"])
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=6), inner, max_size=5),
                    max_leaves=25)


def _read_all(content: bytes, suffix: str) -> None:
    """Every reader on a file of these bytes (.gz names: written as given, whether gzip or not)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        for read in READERS:
            try:
                records = read(path)
            except InputError as e:
                assert str(path) in str(e) and "\n" not in str(e), str(e)
                continue
            # what a reader returns must be writable as UTF-8 (selected.jsonl, tokenisers)
            json.dumps([getattr(r, "row", None) or repr(r) for r in records], ensure_ascii=False).encode("utf-8")


def _damaged(data: bytes, at: int, garbage: bytes) -> bytes:
    at = at % max(1, len(data))
    return data[:at] + garbage + data[at + len(garbage):]


@SETTINGS
@given(content=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES), compress=st.booleans())
def test_random_bytes_only_ever_raise_input_errors(content, suffix, compress):
    _read_all(gzip.compress(content) if compress else content, suffix)


@SETTINGS
@given(doc=JSON, suffix=st.sampled_from(SUFFIXES), bom=st.booleans(), depth=st.sampled_from([0, 0, 50, 100_000]),
       damage=st.none() | st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=16)))
def test_random_json_documents_only_ever_raise_input_errors(doc, suffix, bom, depth, damage):
    """JSON shaped like the real formats, possibly nested absurdly deep, gzipped when the name says
    so, possibly with damaged bytes (corrupt gzip data or broken text)."""
    doc = {"messages": "[" * depth + "]" * depth} if depth and isinstance(doc, dict) else doc
    rows = doc if ".jsonl" in suffix and isinstance(doc, list) else [doc]
    text = "\n".join(json.dumps(x) if not depth else "[" * depth + json.dumps(x) + "]" * depth for x in rows)
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass")
    data = gzip.compress(data) if suffix.endswith(".gz") else data
    _read_all(_damaged(data, *damage) if damage else data, suffix)
