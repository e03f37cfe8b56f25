"""Errors a user can act on. The CLI prints them in one line, without a traceback, and exits 2."""

from __future__ import annotations


class RoseError(Exception):
    """Base class: something about the user's input, config or run directory is wrong."""


def short(value: object, limit: int = 80) -> str:
    """A value or message cut to one short line, for error messages that must fit one line."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def location(path: object, line: int | None = None, entry: int | str | None = None, field: str | None = None,
             row: int | None = None) -> str:
    """'file, line N, entry E, field F' (or 'source, row R, ...' for a table, R counted from 0 as
    `dataset[R]` does): where in the input something is."""
    where = [str(path)]
    if line is not None:
        where.append(f"line {line}")
    if row is not None:
        where.append(f"row {row}")
    if entry is not None:
        where.append(f"entry {short(entry, 60)!r}" if isinstance(entry, str) else f"entry {entry}")
    if field is not None:
        where.append(f"field '{field}'")
    return ", ".join(where)


class InputError(RoseError):
    """A data or model file is missing or malformed; names the file, and the line/entry/row and field."""

    def __init__(
        self,
        path: object,
        message: str,
        *,
        line: int | None = None,
        entry: int | str | None = None,
        field: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path, self.line, self.entry, self.field, self.row = str(path), line, entry, field, row
        super().__init__(f"{location(path, line, entry, field, row)}: {message}")


class PromptTooLong(InputError):
    """A prompt leaves no room for its response within model.max_length (skipped with model.overlong=skip)."""


class ConfigError(RoseError):
    """A config value is missing, mistyped or inconsistent."""


class RunDirError(RoseError):
    """A run directory holds results that do not belong to the current config."""


class NumericalError(RoseError):
    """A stage produced NaN, inf or all-zero numbers (a diverged training run, broken gradients or
    scores); names the stage, where, and the likely cause (`numerics.py`)."""
