"""Readers for every data format rose accepts, each row checked and turned into a typed record.

Rows come from any source `sources.py` opens (JSON lines/JSON, parquet, arrow, save_to_disk
folders, hub datasets). Their shapes:
Pool rows, three ways:       LESS {"dataset", "id", "messages": [{"role", "content"}, ...]}; TRL
                             {"prompt", "completion"} as strings or as message lists; plain
                             {"text"} cut at a response marker (`response_template`).
Preference sets, three ways: the ROSE paper's dict keyed by prompt ({"responses", "pairs",
                             "sft_target", "rejected_target"}), TRL rows ({"prompt", "chosen",
                             "rejected"}) and Anthropic HH transcripts ({"chosen", "rejected"}).
Test sets:                   [{"prompt", "golden_answer"}]
A `columns` mapping names the source's columns where they differ ({"prompt": "instruction"}).

Prompts written as Anthropic transcripts ("\\n\\nHuman: ...\\n\\nAssistant:") become chat messages,
so every record is rendered through the model's own chat template (see `encoding.py`).
Every error names the source, the line (jsonl), entry (json) or row (tables), and the field.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .errors import InputError, short
from .sources import Origin, iter_records, source_name

log = logging.getLogger("rose")

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


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


# ----------------------------------------------------------------------------- fields


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
            raise origin.error(f"unknown role {short(repr(role), 40)}; expected one of {', '.join(ROLES)}", field=f"{field}[{i}].role")
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


def split_transcripts(chosen: str, rejected: str, origin: Origin, field: str) -> tuple[str, str, str]:
    """Split two HH transcripts into (shared prompt, chosen response, rejected response).

    The prompt is the dialogue both share, up to and including its last "\\n\\nAssistant:". For
    well-formed pairs that is each transcript's last Assistant turn; a few HH-RLHF pairs diverge
    earlier, and then the responses carry the rest of each dialogue. `field`: the column errors name.
    """
    shared = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        shared += 1
    cut = chosen.rfind("\n\nAssistant:", 0, shared)
    if cut < 0:
        raise origin.error("the two transcripts share no '\\n\\nAssistant:' turn", field=field)
    cut += len("\n\nAssistant:")
    return chosen[:cut], chosen[cut:], rejected[cut:]


# ----------------------------------------------------------------------------- pool


POOL_COLUMNS = ("messages", "prompt", "completion", "text", "id", "dataset")


def _object(origin: Origin, row: Any) -> dict:
    if not isinstance(row, dict):
        raise origin.error(f"expected a JSON object, got {type(row).__name__}")
    return row


def _given(row: dict, name: str) -> bool:
    """Whether a row has a value under `name` (tables hold None where a row has none)."""
    return row.get(name) is not None


def _prompt(origin: Origin, row: dict, name: str) -> tuple[Message, ...]:
    """A prompt given as chat messages, or as a string: an Anthropic transcript or one user message."""
    if isinstance(_field(origin, row, name, (str, list)), list):
        return _messages(origin, row[name], name)
    return parse_transcript(_text(origin, row, name), origin, name)


def _prompt_completion(origin: Origin, row: dict, prompt: str, completion: str) -> tuple[Message, ...]:
    """TRL's prompt-completion rows: two strings, or a prompt and a completion as message lists."""
    messages = _prompt(origin, row, prompt)
    if isinstance(_field(origin, row, completion, (str, list)), str):
        _text(origin, row, completion)
    return (*messages, {"role": "assistant", "content": _response_text(origin, row, completion)})


def _split_text(origin: Origin, row: dict, name: str, response_template: str | None) -> tuple[Message, ...]:
    """A plain text row cut at the last `response_template`: the prompt before it, the response after it."""
    text = _text(origin, row, name)
    if response_template is None:
        raise origin.error("a text row needs data.response_template, the marker its response follows", field=name)
    cut = text.rfind(response_template)
    if cut < 0:
        raise origin.error(f"no response marker {short(repr(response_template), 40)} in the text", field=name)
    head, response = text[:cut], text[cut + len(response_template):].strip()
    if not head.strip():
        raise origin.error("no prompt before the response marker", field=name)
    if not response:
        raise origin.error("empty response after the response marker", field=name)
    return (*parse_transcript(head, origin, name), {"role": "assistant", "content": response})


def pool_messages(origin: Origin, row: Any, col: Mapping[str, str], response_template: str | None) -> tuple[Message, ...]:
    """The conversation of one pool row of any shape; the last message is the response.
    `col`: the source's name of each of POOL_COLUMNS."""
    row = _object(origin, row)
    if _given(row, col["messages"]):
        messages = _messages(origin, _field(origin, row, col["messages"], list), col["messages"])
        field = col["messages"]
    elif _given(row, col["prompt"]) or _given(row, col["completion"]):
        messages, field = _prompt_completion(origin, row, col["prompt"], col["completion"]), col["prompt"]
    elif _given(row, col["text"]):
        messages, field = _split_text(origin, row, col["text"], response_template), col["text"]
    else:
        raise origin.error(f"missing field; a pool row needs '{col['messages']}', '{col['prompt']}' and "
                           f"'{col['completion']}', or '{col['text']}' (data.columns maps other names)", field=col["messages"])
    if messages[-1]["role"] != "assistant":
        raise origin.error("the last message must be the assistant's response", field=field)
    if not any(m["role"] == "user" for m in messages[:-1]):
        raise origin.error("no user message before the response", field=field)
    return messages


def read_pool(
    paths: Sequence[str | Path], columns: Mapping[str, str] | None = None, response_template: str | None = None
) -> list[Example]:
    """Read instruction rows from one or more sources, in order; ids must be unique.

    `columns` maps rose's names (POOL_COLUMNS) to the source's where they differ; `response_template`
    is the marker a plain text row's response follows. `Example.row` is the row as the source holds
    it, so the selection is written in the pool's own format.
    """
    col = {name: (columns or {}).get(name, name) for name in POOL_COLUMNS}
    examples: list[Example] = []
    seen: dict[str, Origin] = {}
    for path in paths:
        default_source = source_name(path)
        for index, (origin, row) in enumerate(iter_records(path)):
            messages = pool_messages(origin, row, col, response_template)
            source = _field(origin, row, col["dataset"], str) if _given(row, col["dataset"]) else default_source
            ex_id = str(_field(origin, row, col["id"], (str, int)) if _given(row, col["id"]) else f"{source}_{index}")
            if ex_id in seen:
                raise origin.error(f"duplicate id {ex_id!r} (first seen at {seen[ex_id]})", field=col["id"])
            seen[ex_id] = origin
            examples.append(Example(ex_id, source, messages, row, origin))
    return examples


# ----------------------------------------------------------------------------- preferences

PreferenceFormat = Literal["auto", "rose", "trl", "hh"]
PairChoice = Literal["target", "all"]
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "subtask")


def _detect_format(path: str | Path, col: Mapping[str, str]) -> str:
    for origin, value in iter_records(path):
        if isinstance(value, tuple):
            return "rose"
        if isinstance(value, dict) and _given(value, col["prompt"]):
            return "trl"
        if isinstance(value, dict) and _given(value, col["chosen"]):
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
                raise origin.error(f"expected [chosen_index, rejected_index] into responses, got {short(repr(pair), 40)}", field=f"pairs[{j}]")
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


def _trl_pairs(path: str | Path, col: Mapping[str, str]) -> Iterator[tuple[Origin, tuple[Message, ...], str, str, dict]]:
    for origin, row in iter_records(path):
        prompt = _prompt(origin, _object(origin, row), col["prompt"])
        yield origin, prompt, _response_text(origin, row, col["chosen"]), _response_text(origin, row, col["rejected"]), row


def _hh_pairs(path: str | Path, col: Mapping[str, str]) -> Iterator[tuple[Origin, tuple[Message, ...], str, str]]:
    for origin, row in iter_records(path):
        chosen, rejected = _text(origin, row, col["chosen"]), _text(origin, row, col["rejected"])
        prompt, chosen, rejected = split_transcripts(chosen, rejected, origin, col["chosen"])
        yield origin, parse_transcript(prompt, origin, col["chosen"]), chosen, rejected


def read_preferences(
    paths: Sequence[str | Path],
    fmt: PreferenceFormat = "auto",
    pairs: PairChoice = "target",
    subtasks: str | int = "file",
    empty: Literal["error", "skip"] = "error",
    columns: Mapping[str, str] | None = None,
    subtask_names: Sequence[str] = (),
) -> list[PreferencePair]:
    """Read preference pairs from sources in any supported format, then assign subtasks.

    `pairs` (ROSE format only): "target" takes the one (sft_target, rejected_target) pair per prompt
    that ROSE's DPO validation gradient uses; "all" takes every listed pair.
    `subtasks`, `subtask_names`: see `assign_subtasks`. `empty`: a pair with an empty response is an error, or is
    skipped (HH-RLHF's own test split has a few). A pair whose two responses are the same text is
    dropped with a warning (two HH validation sets hold one each); a file of nothing else is an error.
    `columns` (TRL and HH rows) maps PREFERENCE_COLUMNS to the source's names where they differ.
    """
    col = {name: (columns or {}).get(name, name) for name in PREFERENCE_COLUMNS}
    records: list[PreferencePair] = []
    identical: list[Origin] = []
    read: list[Origin] = []  # every prompt read, dropped ones too: subtask blocks are positions in the file
    for path in paths:
        kind = _detect_format(path, col) if fmt == "auto" else fmt
        stem = source_name(path)
        if kind == "rose":
            rows = ((o, p, c, r, {}) for o, p, c, r in _rose_pairs(path, pairs))
        elif kind == "trl":
            rows = _trl_pairs(path, col)
        elif kind == "hh":
            rows = ((o, p, c, r, {}) for o, p, c, r in _hh_pairs(path, col))
        else:
            raise InputError(path, f"unknown preference format {kind!r}; expected auto, rose, trl or hh")
        for i, (origin, prompt, chosen, rejected, row) in enumerate(rows):
            read.append(origin)
            blank = [col[name] for name, text in (("chosen", chosen), ("rejected", rejected)) if not text.strip()]
            if blank and empty == "skip":
                continue
            if blank:
                raise origin.error("empty response", field=blank[0])
            if chosen.strip() == rejected.strip():  # no preference to learn: its DPO gradient is zero
                identical.append(origin)
                continue
            subtask = row.get(col["subtask"], "") if subtasks == "field" else stem
            if subtasks == "field" and (not isinstance(subtask, str) or not subtask):
                raise origin.error("expected a non-empty string", field=col["subtask"])
            records.append(PreferencePair(f"{stem}:{i}", prompt, chosen.strip(), rejected.strip(), subtask, origin))
    if identical and not records:
        raise identical[0].error(f"all {len(identical)} pairs have identical chosen and rejected responses; "
                                 "a preference set needs pairs that differ", field=col["rejected"])
    if identical:
        log.warning("dropped %d preference pair(s) whose chosen and rejected responses are identical (first: %s)",
                    len(identical), identical[0])
    if not records:
        raise InputError(", ".join(map(str, paths)), "no preference pairs found")
    return assign_subtasks(records, subtasks, subtask_names, read)


def assign_subtasks(records: list, subtasks: str | int, names: Sequence[str], read: Sequence[Origin]) -> list:
    """Label records with the subtask that the paper's max-over-subtasks aggregation needs.

    "file": one subtask per input file (already set by the reader). "field": each row's `subtask`
    field (already set). "none": a single subtask. An integer N: N contiguous equal blocks of prompts
    in file order, the layout of the ROSE paper's single-file validation sets (18 for SHP, 2 for HH),
    named by `names` (the files carry no names: SHP's blocks are its subreddits in alphabetical
    order, the test files' order) or block00, block01, ...
    `read`: the origins of every prompt read, in file order, those of dropped pairs too (HH's 10-shot
    set holds a pair with identical responses), so that a dropped pair does not move the blocks.
    """
    if subtasks in ("file", "field"):
        return records
    if subtasks == "none":
        return [replace(r, subtask="all") for r in records]
    if isinstance(subtasks, int) and not isinstance(subtasks, bool) and subtasks > 0:
        # blocks count prompts (file entries), not pairs: a ROSE prompt can hold several pairs
        units = list(dict.fromkeys(read))
        if len(units) % subtasks:
            raise InputError(records[0].origin.path, f"{len(units)} prompts cannot be split into {subtasks} equal subtask blocks", field="subtasks")
        if names and len(names) != subtasks:
            raise InputError(records[0].origin.path, f"{len(names)} subtask names for {subtasks} blocks", field="subtask_names")
        size = len(units) // subtasks
        label = list(names) or [f"block{i:02d}" for i in range(subtasks)]
        block = {u: i // size for i, u in enumerate(units)}
        return [replace(r, subtask=label[block[r.origin]]) for r in records]
    raise InputError(records[0].origin.path, f"unknown subtasks setting {subtasks!r}; expected file, field, none or a positive integer")


# ----------------------------------------------------------------------------- test prompts


def read_test_prompts(paths: Sequence[str | Path], empty: Literal["error", "skip"] = "error") -> list[TestPrompt]:
    """Read {prompt, golden_answer} rows; the subtask is the file's name. `empty`: as in read_preferences."""
    out = []
    for path in paths:
        stem = source_name(path)
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
    """Write rows as UTF-8 JSON lines (atomically: the file appears complete or not at all). Values
    JSON has no type for (a table's dates, say) are written as their text."""
    from .store import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
