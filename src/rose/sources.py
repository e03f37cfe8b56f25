"""Every input source opened as rows, each with the origin that errors name.

A source is one of
- a `.jsonl` or `.json` file, gzipped or not (rows are parsed JSON values; errors name the line,
  or the entry of a .json list or object),
- a `.parquet`, `.arrow` or `.feather` file (Arrow IPC file or stream format),
- a folder written by `datasets`' `save_to_disk` (one split: a `Dataset`, not a `DatasetDict`),
- a hub dataset `hf://OWNER/NAME[/CONFIG][@REVISION][:SPLIT]` (see `hub.py`).
Table rows are plain dicts, as `datasets` yields them; their errors name the row, counted from 0
as `dataset[i]` counts it. pyarrow and datasets are imported only when such a source is read, so
reading and checking JSON inputs stays as fast as it was.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, location, short
from .hub import SYNTAX, is_hub, load_split, parse_hub

TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
BATCH_ROWS = 1024


@dataclass(frozen=True)
class Origin:
    """Where a record came from, so later errors (e.g. an over-long prompt) can point at it."""

    path: str
    line: int | None = None
    entry: int | str | None = None
    row: int | None = None

    def error(self, message: str, field: str | None = None) -> InputError:
        return InputError(self.path, message, line=self.line, entry=self.entry, field=field, row=self.row)

    def __str__(self) -> str:
        return location(self.path, self.line, self.entry, row=self.row)


def source_name(source: str | Path) -> str:
    """A source's short name, the default pool source and subtask: a file's name up to its first
    dot, a folder's name, a hub dataset's name."""
    if is_hub(source):
        return parse_hub(str(source)).name
    return Path(source).name.split(".")[0]


def iter_records(source: str | Path) -> Iterator[tuple[Origin, Any]]:
    """Yield (origin, row) for each row of a source (see the module docstring).

    A .json file holding a list yields its entries; one holding an object yields (key, value) pairs.
    A UTF-8 byte-order mark at the start (as some Windows tools write) is ignored.
    """
    if is_hub(source):
        yield from _table_rows(str(source), _dataset_batches(load_split(str(source))))
        return
    path = Path(source)
    suffix = _base_suffix(path)
    if path.is_dir():
        yield from _table_rows(str(path), _dataset_batches(_saved_dataset(path)))
    elif suffix in (".jsonl", ".json"):
        yield from _json_records(path, suffix)
    elif suffix in TABLE_SUFFIXES and path.suffix == suffix:
        yield from _table_rows(str(path), _table_file(path).to_batches(max_chunksize=BATCH_ROWS))
    elif not path.exists() and not path.suffix:
        raise InputError(path, "file or folder not found")
    else:
        raise InputError(path, "unsupported file type: expected .jsonl, .json (either gzipped), .parquet, .arrow, "
                         f".feather, a save_to_disk folder or {SYNTAX}")


def source_digest(source: str | Path) -> str:
    """A short hash that changes when the rows of a source can have changed: a file's bytes, a
    folder's files, a hub split's spec and the commit its cached copy was built from."""
    h = hashlib.sha256()
    if is_hub(source):
        h.update(str(source).encode())
        for f in load_split(str(source)).cache_files:
            h.update(f["filename"].encode())
        return h.hexdigest()[:16]
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path)).encode() if path.is_dir() else b"")
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- tables


def _table_rows(name: str, batches: Iterable[Any]) -> Iterator[tuple[Origin, dict]]:
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield Origin(name, row=index), row
            index += 1


def _table_file(path: Path) -> Any:
    """A parquet file, or an Arrow IPC file (feather v2) or stream (what `datasets` writes), as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.ipc
    import pyarrow.parquet

    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        if path.suffix == ".parquet":
            return pyarrow.parquet.read_table(path)
        with pa.memory_map(str(path)) as stream:
            try:
                return pyarrow.ipc.open_file(stream).read_all()
            except pa.ArrowInvalid:  # not the file format: the stream format, as datasets writes .arrow files
                stream.seek(0)
                return pyarrow.ipc.open_stream(stream).read_all()
    except (OSError, pa.ArrowException) as e:
        raise InputError(path, f"cannot read file ({type(e).__name__}: {short(e)})") from e


def _saved_dataset(path: Path) -> Any:
    """The `datasets.Dataset` that `save_to_disk` wrote into `path`."""
    import datasets
    from datasets.exceptions import DatasetsError

    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        raise InputError(path, f"a DatasetDict folder (splits: {', '.join(map(str, splits))}); give one split's folder, "
                         f"e.g. {path / (splits[0] if splits else 'train')}")
    if not (path / "state.json").is_file():
        raise InputError(path, "not a dataset folder written by save_to_disk (no state.json)")
    try:
        return datasets.load_from_disk(str(path))
    except (OSError, ValueError, DatasetsError) as e:
        raise InputError(path, f"cannot load the saved dataset ({type(e).__name__}: {short(e)})") from e


def _dataset_batches(dataset: Any) -> Iterator[Any]:
    """A `datasets.Dataset` as pyarrow tables of BATCH_ROWS rows (through its indices, if it has any)."""
    yield from dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)


# ----------------------------------------------------------------------------- JSON files


def _open_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: corrupt (not only truncated) gzip data
        raise InputError(path, f"cannot read file ({type(e).__name__}: {short(e)})") from e


def _base_suffix(path: Path) -> str:
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


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


def _json_records(path: Path, suffix: str) -> Iterator[tuple[Origin, Any]]:
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
            yield Origin(str(path), entry=key), (key, value)  # the whole key: two prompts can begin alike
    else:
        raise InputError(path, f"expected a JSON list or object at top level, got {type(doc).__name__}")
