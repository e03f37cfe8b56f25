"""A selection written for the tools a user trains with next, and every pool example's score as a table.

The selected rows stay in the pool's own format (selected.jsonl, selected.parquet and a
`save_to_disk` folder); `sft.jsonl` holds them as TRL's conversational prompt/completion rows,
which `SFTTrainer` trains on the response alone (its `completion_only_loss`), the tokens rose's
own fine-tune trains on; the ranked score table shows why each example was or was not chosen.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import RunDirError
from .formats import Example, write_jsonl
from .selection import top_fraction, write_selection
from .store import atomic_path, read_json

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("rose")

RANKED_COLUMNS = ("rank", "id", "source", "score")


def rows_table(rows: Sequence[dict]) -> pa.Table:
    """The rows as one Arrow table, columns in first-seen order (None where a row lacks one).

    A column whose values Arrow cannot hold in one type (an id that is a number in one file and a
    string in another) is written as each value's JSON text, with a warning; selected.jsonl keeps
    the values as they were.
    """
    import pyarrow as pa

    names = list(dict.fromkeys(name for row in rows for name in row))
    arrays, as_text = [], []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values]))
            as_text.append(name)
    if as_text:
        log.warning("selection tables: column(s) %s hold values of several types; written as JSON text", ", ".join(as_text))
    return pa.table(arrays, names=names)


def sft_rows(examples: Iterable[Example]) -> list[dict]:
    """TRL's conversational prompt/completion rows: the prompt messages, and the response as one assistant message."""
    return [{"id": ex.id, "prompt": list(ex.messages[:-1]), "completion": [ex.messages[-1]]} for ex in examples]


def score_table(score_dir: Path, pool: Sequence[Example]) -> pa.Table:
    """Every pool example, best first: rank (1 = best), id, source, score, then one column per subtask.

    Built from the score stage's scores.npy [N], per_subtask.npy [N, S] and scores.json (ids and
    subtask names). Ties rank in pool order, as `top_fraction` breaks them, so a selection of k
    examples is exactly the first k rows. A subtask named like a fixed column gets a "subtask:" prefix.
    """
    import pyarrow as pa

    scores, per_subtask = np.load(score_dir / "scores.npy"), np.load(score_dir / "per_subtask.npy")
    meta = read_json(score_dir / "scores.json")
    if meta["ids"] != [ex.id for ex in pool] or per_subtask.shape != (len(pool), len(meta["subtasks"])):
        raise RunDirError(f"{score_dir}: the scores belong to another pool; rerun the score stage")
    order = top_fraction(scores, 1.0)
    columns = {
        "rank": pa.array(np.arange(1, len(order) + 1)),
        "id": pa.array([pool[i].id for i in order]),
        "source": pa.array([pool[i].source for i in order]),
        "score": pa.array(scores[order]),
    }
    for j, name in enumerate(meta["subtasks"]):
        columns[f"subtask:{name}" if name in RANKED_COLUMNS else name] = pa.array(per_subtask[order, j])
    return pa.table(columns)


def write_exports(out_dir: Path, pool: Sequence[Example], indices: np.ndarray, score_dir: Path) -> dict:
    """Write every file of a selection into `out_dir`; returns selection.json's content.

    - selected.jsonl: the selected rows as the pool holds them, best first (`write_selection`)
    - selection.json: method, counts, threshold, per-source counts, selected ids and scores
    - selected.parquet: selected.jsonl as a table
    - selected/: the same table as a `datasets` folder (`datasets.load_from_disk`)
    - sft.jsonl: the selection as TRL prompt/completion rows (`sft_rows`), for `SFTTrainer`
    - scores.parquet, scores.csv: every pool example ranked by score (`score_table`)
    `indices`: the selected pool indices, best first; `score_dir`: the score stage's folder.
    """
    out_dir = Path(out_dir)
    scores = np.load(score_dir / "scores.npy")
    info = write_selection(out_dir, pool, indices, scores, read_json(score_dir / "scores.json")["method"])
    write_jsonl(out_dir / "sft.jsonl", sft_rows(pool[i] for i in indices))
    try:
        import datasets
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError as e:  # the jsonl files above are the selection; the tables are for the HF tools
        log.warning("selection: %s is not installed, so no selected.parquet, selected/ or scores table "
                    "(pip install datasets pyarrow)", e.name)
        return info
    selected = rows_table([pool[i].row for i in indices])
    with atomic_path(out_dir / "selected.parquet") as tmp:
        pyarrow.parquet.write_table(selected, tmp)
    with atomic_path(out_dir / "selected") as tmp:
        datasets.Dataset(selected).save_to_disk(str(tmp))
    ranked = score_table(score_dir, pool)
    with atomic_path(out_dir / "scores.parquet") as tmp:
        pyarrow.parquet.write_table(ranked, tmp)
    with atomic_path(out_dir / "scores.csv") as tmp:
        pyarrow.csv.write_csv(ranked, tmp)
    return info
