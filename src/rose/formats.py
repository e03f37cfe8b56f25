"""Readers for every data format rose accepts, each row checked and turned into a typed record.

Pool rows (LESS):            {"dataset", "id", "messages": [{"role", "content"}, ...]}
Preference sets, three ways: the ROSE paper's dict keyed by prompt ({"responses", "pairs",
                             "sft_target", "rejected_target"}), TRL rows ({"prompt", "chosen",
                             "rejected"}) and Anthropic HH transcripts ({"chosen", "rejected"}).
Test sets:                   [{"prompt", "golden_answer"}]

Prompts written as Anthropic transcripts ("\\n\\nHuman: ...\\n\\nAssistant:") become chat messages,
so every record is rendered through the model's own chat template (see `encoding.py`).
Every error names the file, the line (jsonl) or entry (json), and the field.
"""

from __future__ import annotations

import codecs
import gzip
import json
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .errors import InputError, location

log = logging.getLogger("rose")

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Origin:
    """Where a record came from, so later errors (e.g. an over-long prompt) can point at it."""

    path: str
    line: int | None = None
    entry: int | str | None = None

    def error(self, message: str, field: str | None = None) -> InputError:
        return InputError(self.path, message, line=self.line, entry=self.entry, field=field)

    def __str__(self) -> str:
        return location(self.path, self.line, self.entry)


@dataclass(frozen=True)
class Example:
    """One instruction-tuning example; the last message is the response that is trained on."""

    id: str
    source: str
    messages: tuple[Message, ...]
    row: dict[str, Any]
    origin: Origin


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (as chat messages, ending with a user turn) and two responses, chosen first."""

    id: str
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    subtask: str
    origin: Origin


@dataclass(frozen=True)
class TestPrompt:
    """A prompt with a reference answer, for golden-answer likelihood."""

    id: str
    prompt: tuple[Message, ...]
    golden: str
    subtask: str
    origin: Origin


# ----------------------------------------------------------------------------- raw records


def _open_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: corrupt (not only truncated) gzip data
        raise InputError(path, f"cannot read file ({type(e).__name__}: {_short(e)})") from e


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def _short(value: object, limit: int = 80) -> str:
    """A value or message cut to one short line, for error messages that must fit one line."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _parse(text: str, raw: bytes, where: Origin) -> Any:
    """json.loads, with every way a document can be unusable turned into an InputError at `where`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        at = where if where.line is not None else Origin(where.path, line=e.lineno)  # a whole .json: its line
        raise at.error(f"malformed JSON: {e.msg} at column {e.colno}") from e
    except RecursionError as e:
        raise where.error("JSON nested too deeply") from e
    if _ESCAPED_SURROGATE.search(raw):  # \ud800-style escapes: valid JSON, but a lone one is no Unicode text
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise where.error("not valid Unicode (a lone surrogate escape such as \\ud800)") from e
        except RecursionError as e:
            raise where.error("JSON nested too deeply") from e
    return value


def _decode(raw: bytes, where: Origin) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if where.line is None:  # a whole .json document: name the line the bad byte is on
            where = Origin(where.path, line=raw[: e.start].count(b"\n") + 1)
        raise where.error(f"not valid UTF-8 (byte {e.start})") from e


def iter_records(path: str | Path) -> Iterator[tuple[Origin, Any]]:
    """Yield (origin, parsed JSON value) for each row of a .jsonl/.json file, gzipped or not.

    A .json file holding a list yields its entries; one holding an object yields (key, value) pairs.
    A UTF-8 byte-order mark at the start (as some Windows tools write) is ignored.
    """
    path = Path(path)
    suffix = _base_suffix(path)
    if suffix not in (".jsonl", ".json"):
        raise InputError(path, "unsupported file type: expected .jsonl, .json, .jsonl.gz or .json.gz")
    data = _open_bytes(path).removeprefix(codecs.BOM_UTF8)
    if suffix == ".jsonl":
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            origin = Origin(str(path), line=number)
            yield origin, _parse(_decode(raw, origin), raw, origin)
        return
    doc = _parse(_decode(data, Origin(str(path))), data, Origin(str(path)))
    if isinstance(doc, list):
        for i, value in enumerate(doc):
            yield Origin(str(path), entry=i), value
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield Origin(str(path), entry=_short(key, 60)), (key, value)
    else:
        raise InputError(path, f"expected a JSON list or object at top level, got {type(doc).__name__}")


def _field(origin: Origin, row: Any, name: str, kind: type | tuple[type, ...], prefix: str = "") -> Any:
    if not isinstance(row, dict):
        raise origin.error(f"expected a JSON object, got {type(row).__name__}")
    if name not in row:
        raise origin.error("missing field", field=prefix + name)
    value = row[name]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise origin.error(f"expected {want}, got {type(value).__name__}", field=prefix + name)
    return value


def _text(origin: Origin, row: Any, name: str, prefix: str = "") -> str:
    value = _field(origin, row, name, str, prefix)
    if not value.strip():
        raise origin.error("empty text", field=prefix + name)
    return value


def _messages(origin: Origin, value: Any, field: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise origin.error("expected a non-empty list of messages", field=field)
    out = []
    for i, m in enumerate(value):
        role = _field(origin, m, "role", str, f"{field}[{i}].")
        if role not in ROLES:
            raise origin.error(f"unknown role {_short(repr(role), 40)}; expected one of {', '.join(ROLES)}", field=f"{field}[{i}].role")
        out.append({"role": role, "content": _text(origin, m, "content", f"{field}[{i}].")})
    return tuple(out)


# ----------------------------------------------------------------------------- transcripts

_TURN = re.compile(r"\n\nHuman:|\n\nAssistant:")


def parse_transcript(text: str, origin: Origin, field: str) -> tuple[Message, ...]:
    """Turn "\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:" into user/assistant messages.

    Empty turns (such as the final "Assistant:" cue) are dropped; a few HH prompts end with an
    assistant turn, which then stays the last message. Text that does not start with a "Human:"
    turn is taken as one user message.
    """
    if not text.lstrip(" ").startswith("\n\nHuman:"):
        return ({"role": "user", "content": text.strip()},)
    marks = list(_TURN.finditer(text))
    messages = []
    for mark, nxt in zip(marks, marks[1:] + [None]):
        body = text[mark.end() : nxt.start() if nxt else len(text)].strip()
        role = "user" if "Human" in mark.group() else "assistant"
        if body:
            messages.append({"role": role, "content": body})
    if not any(m["role"] == "user" for m in messages):
        raise origin.error("the prompt has no non-empty Human turn", field=field)
    return tuple(messages)


def split_transcripts(chosen: str, rejected: str, origin: Origin) -> tuple[str, str, str]:
    """Split two HH transcripts into (shared prompt, chosen response, rejected response).

    The prompt is the dialogue both share, up to and including its last "\\n\\nAssistant:". For
    well-formed pairs that is each transcript's last Assistant turn; a few HH-RLHF pairs diverge
    earlier, and then the responses carry the rest of each dialogue.
    """
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    cut = chosen.rfind("\n\nAssistant:", 0, shared)
    if cut < 0:
        raise origin.error("the two transcripts share no '\\n\\nAssistant:' turn", field="chosen")
    cut += len("\n\nAssistant:")
    return chosen[:cut], chosen[cut:], rejected[cut:]


# ----------------------------------------------------------------------------- pool


def read_pool(paths: Sequence[str | Path]) -> list[Example]:
    """Read LESS-format instruction rows from one or more files, in order; ids must be unique."""
    examples: list[Example] = []
    seen: dict[str, Origin] = {}
    for path in paths:
        default_source = Path(path).name.split(".")[0]
        for index, (origin, row) in enumerate(iter_records(path)):
            messages = _messages(origin, _field(origin, row, "messages", list), "messages")
            if messages[-1]["role"] != "assistant":
                raise origin.error("the last message must be the assistant's response", field="messages")
            if not any(m["role"] == "user" for m in messages[:-1]):
                raise origin.error("no user message before the response", field="messages")
            source = _field(origin, row, "dataset", str) if "dataset" in row else default_source
            ex_id = _field(origin, row, "id", (str, int)) if "id" in row else f"{source}_{index}"
            ex_id = str(ex_id)
            if ex_id in seen:
                first = seen[ex_id]
                raise origin.error(f"duplicate id {ex_id!r} (first seen at {first.path} line {first.line})", field="id")
            seen[ex_id] = origin
            examples.append(Example(ex_id, source, messages, row, origin))
    return examples


# ----------------------------------------------------------------------------- preferences

PreferenceFormat = Literal["auto", "rose", "trl", "hh"]
PairChoice = Literal["target", "all"]


def _detect_format(path: str | Path) -> str:
    for origin, value in iter_records(path):
        if isinstance(value, tuple):
            return "rose"
        if isinstance(value, dict) and "prompt" in value:
            return "trl"
        if isinstance(value, dict) and "chosen" in value:
            return "hh"
        raise origin.error("cannot tell the preference format; set format: rose, trl or hh")
    raise InputError(path, "empty preference file")


def _rose_pairs(path: str | Path, choice: PairChoice) -> Iterator[tuple[Origin, tuple[Message, ...], str, str]]:
    for origin, value in iter_records(path):
        if not isinstance(value, tuple):
            raise origin.error("expected a JSON object keyed by prompt (ROSE format)")
        prompt_text, row = value
        prompt = parse_transcript(prompt_text, origin, "prompt")
        if choice == "target":
            yield origin, prompt, _field(origin, row, "sft_target", str), _field(origin, row, "rejected_target", str)
            continue
        responses = _field(origin, row, "responses", list)
        for j, pair in enumerate(_field(origin, row, "pairs", list)):
            ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(i, int) and 0 <= i < len(responses) for i in pair)
            if not ok:
                raise origin.error(f"expected [chosen_index, rejected_index] into responses, got {_short(repr(pair), 40)}", field=f"pairs[{j}]")
            for i in pair:
                if not isinstance(responses[i], str):
                    raise origin.error(f"expected str, got {type(responses[i]).__name__}", field=f"responses[{i}]")
            yield origin, prompt, responses[pair[0]], responses[pair[1]]


def _response_text(origin: Origin, row: dict, name: str) -> str:
    value = _field(origin, row, name, (str, list))
    if isinstance(value, list):  # TRL conversational: [{"role": "assistant", "content": ...}]
        messages = _messages(origin, value, name)
        if messages[-1]["role"] != "assistant":
            raise origin.error("the last message must be the assistant's", field=name)
        return messages[-1]["content"]
    return value


def _trl_pairs(path: str | Path) -> Iterator[tuple[Origin, tuple[Message, ...], str, str, dict]]:
    for origin, row in iter_records(path):
        raw_prompt = _field(origin, row, "prompt", (str, list))
        if isinstance(raw_prompt, list):
            prompt = _messages(origin, raw_prompt, "prompt")
        else:
            prompt = parse_transcript(_text(origin, row, "prompt"), origin, "prompt")
        yield origin, prompt, _response_text(origin, row, "chosen"), _response_text(origin, row, "rejected"), row


def _hh_pairs(path: str | Path) -> Iterator[tuple[Origin, tuple[Message, ...], str, str]]:
    for origin, row in iter_records(path):
        prompt, chosen, rejected = split_transcripts(_text(origin, row, "chosen"), _text(origin, row, "rejected"), origin)
        yield origin, parse_transcript(prompt, origin, "chosen"), chosen, rejected


def read_preferences(
    paths: Sequence[str | Path],
    fmt: PreferenceFormat = "auto",
    pairs: PairChoice = "target",
    subtasks: str | int = "file",
    empty: Literal["error", "skip"] = "error",
) -> list[PreferencePair]:
    """Read preference pairs from files in any supported format, then assign subtasks.

    `pairs` (ROSE format only): "target" takes the one (sft_target, rejected_target) pair per prompt
    that ROSE's DPO validation gradient uses; "all" takes every listed pair.
    `subtasks`: see `assign_subtasks`. `empty`: a pair with an empty response is an error, or is
    skipped (HH-RLHF's own test split has a few). A pair whose two responses are the same text is
    dropped with a warning (two HH validation sets hold one each); a file of nothing else is an error.
    """
    records: list[PreferencePair] = []
    identical: list[Origin] = []
    for path in paths:
        kind = _detect_format(path) if fmt == "auto" else fmt
        stem = Path(path).name.split(".")[0]
        if kind == "rose":
            rows = ((o, p, c, r, {}) for o, p, c, r in _rose_pairs(path, pairs))
        elif kind == "trl":
            rows = _trl_pairs(path)
        elif kind == "hh":
            rows = ((o, p, c, r, {}) for o, p, c, r in _hh_pairs(path))
        else:
            raise InputError(path, f"unknown preference format {kind!r}; expected auto, rose, trl or hh")
        for i, (origin, prompt, chosen, rejected, row) in enumerate(rows):
            blank = [name for name, text in (("chosen", chosen), ("rejected", rejected)) if not text.strip()]
            if blank and empty == "skip":
                continue
            if blank:
                raise origin.error("empty response", field=blank[0])
            if chosen.strip() == rejected.strip():  # no preference to learn: its DPO gradient is zero
                identical.append(origin)
                continue
            subtask = row.get("subtask", "") if subtasks == "field" else stem
            if subtasks == "field" and (not isinstance(subtask, str) or not subtask):
                raise origin.error("expected a non-empty string", field="subtask")
            records.append(PreferencePair(f"{stem}:{i}", prompt, chosen.strip(), rejected.strip(), subtask, origin))
    if identical and not records:
        raise identical[0].error(f"all {len(identical)} pairs have identical chosen and rejected responses; "
                                 "a preference set needs pairs that differ", field="rejected")
    if identical:
        log.warning("dropped %d preference pair(s) whose chosen and rejected responses are identical (first: %s)",
                    len(identical), identical[0])
    if not records:
        raise InputError(", ".join(map(str, paths)), "no preference pairs found")
    return assign_subtasks(records, subtasks)


def assign_subtasks(records: list, subtasks: str | int) -> list:
    """Label records with the subtask that the paper's max-over-subtasks aggregation needs.

    "file": one subtask per input file (already set by the reader). "field": each row's `subtask`
    field (already set). "none": a single subtask. An integer N: N contiguous equal blocks of prompts
    in file order, the layout of the ROSE paper's single-file validation sets (18 for SHP, 2 for HH).
    """
    if subtasks in ("file", "field"):
        return records
    if subtasks == "none":
        return [replace(r, subtask="all") for r in records]
    if isinstance(subtasks, int) and not isinstance(subtasks, bool) and subtasks > 0:
        # blocks count prompts (file entries), not pairs: a ROSE prompt can hold several pairs
        units = list(dict.fromkeys((r.origin.path, r.origin.line, r.origin.entry) for r in records))
        if len(units) % subtasks:
            raise InputError(records[0].origin.path, f"{len(units)} prompts cannot be split into {subtasks} equal subtask blocks", field="subtasks")
        size = len(units) // subtasks
        block = {u: i // size for i, u in enumerate(units)}
        return [replace(r, subtask=f"block{block[(r.origin.path, r.origin.line, r.origin.entry)]:02d}") for r in records]
    raise InputError(records[0].origin.path, f"unknown subtasks setting {subtasks!r}; expected file, field, none or a positive integer")


# ----------------------------------------------------------------------------- test prompts


def read_test_prompts(paths: Sequence[str | Path], empty: Literal["error", "skip"] = "error") -> list[TestPrompt]:
    """Read {prompt, golden_answer} rows; the subtask is the file's name. `empty`: as in read_preferences."""
    out = []
    for path in paths:
        stem = Path(path).name.split(".")[0]
        for i, (origin, row) in enumerate(iter_records(path)):
            prompt = parse_transcript(_text(origin, row, "prompt"), origin, "prompt")
            golden = _field(origin, row, "golden_answer", str).strip()
            if not golden and empty == "skip":
                continue
            if not golden:
                raise origin.error("empty response", field="golden_answer")
            out.append(TestPrompt(f"{stem}:{i}", prompt, golden, stem, origin))
    return out


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    """Write rows as UTF-8 JSON lines (atomically: the file appears complete or not at all)."""
    from .store import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
