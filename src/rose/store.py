"""Files on disk: atomic writes, tensors, gradient shards and stage manifests.

Stages talk only through files in one run directory. Every write goes to a temporary name and is
renamed into place, so a file either exists complete or not at all; a stage is complete only once
its `manifest.json` says so, with the key of the config and inputs that produced it (`keys.py`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import InputError, RunDirError

MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `path` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Indented JSON with every list of numbers on one line: per-pair correctness and per-step losses
    stay a line each, not a line per number (a comparison's results file is a third the size)."""
    rows: list[str] = []

    def hold(x: Any) -> Any:  # number lists -> placeholders: a NUL and the list's index, which no text rose writes is
        if isinstance(x, dict):
            return {k: hold(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            if x and all(isinstance(v, int | float) and not isinstance(v, bool) for v in x):
                rows.append(json.dumps(x))
                return f"\0{len(rows) - 1}"
            return [hold(v) for v in x]
        return x

    text = json.dumps(hold(obj), indent=2, ensure_ascii=False, default=str)
    atomic_write_text(path, re.sub(r'"\\u0000(\d+)"', lambda m: rows[int(m.group(1))], text) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(path, "file not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"corrupt JSON ({e})") from e


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise InputError(path, f"corrupt or truncated safetensors file ({e})") from e


def save_array(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


# ----------------------------------------------------------------------------- stage manifests


@dataclass(frozen=True)
class StageDir:
    """One stage's folder: done when its manifest is complete and matches `key`."""

    path: Path
    stage: str
    key: str

    def manifest(self) -> dict | None:
        file = self.path / MANIFEST
        return read_json(file) if file.is_file() else None

    def is_done(self) -> bool:
        """True if finished with this key; raise if the folder was written by another config."""
        found = self.manifest()
        if found is None:
            return False
        if found.get("key") != self.key:
            raise RunDirError(
                f"{self.path} holds '{self.stage}' results of another config or input "
                f"(key {found.get('key')} != {self.key}); choose a new run_dir or delete that folder"
            )
        return bool(found.get("complete"))

    def begin(self) -> None:
        """Claim the folder for this key (raising if another config owns it) before writing."""
        self.is_done()
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / MANIFEST, {"stage": self.stage, "key": self.key, "complete": False})

    def finish(self, **info: Any) -> None:
        from . import __version__

        versions = {"rose": __version__, "torch": torch.__version__}
        write_json(self.path / MANIFEST, {"stage": self.stage, "key": self.key, "complete": True, "versions": versions, **info})


class StageBusy(RuntimeError):
    """Another process is working on this stage folder."""


@contextmanager
def folder_lock(folder: str | Path, wait: bool = True) -> Iterator[None]:
    """An exclusive lock on a folder (flock on `folder/.lock`), held while one process writes it.

    Processes that share a stage cache (several `rose compare` workers) take it before they
    check and write a stage, so no stage is ever written twice at once. With wait=False a held
    lock raises StageBusy at once instead of waiting.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as e:
            raise StageBusy(f"{folder} is being written by another process") from e
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- gradient shards


def shard_name(start: int, stop: int) -> str:
    return f"shard-{start:09d}-{stop:09d}.npy"


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def open_shards(folder: str | Path, n: int, shard_size: int) -> list[np.ndarray]:
    """A stage's shards in order, memory-mapped (read as they are used); every shard must exist."""
    parts = []
    for start, stop in shard_ranges(n, shard_size):
        file = Path(folder) / shard_name(start, stop)
        if not file.is_file():
            raise RunDirError(f"missing gradient shard {file}; rerun the stage to complete it")
        part = np.load(file, mmap_mode="r")
        if part.shape[0] != stop - start:
            raise RunDirError(f"gradient shard {file} has {part.shape[0]} rows, expected {stop - start}")
        parts.append(part)
    return parts
