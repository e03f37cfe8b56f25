"""Top-share selection: order, ties, size, and output in the pool's own format."""

from __future__ import annotations

import json

import numpy as np

from rose.formats import read_pool
from rose.selection import top_fraction, write_selection


def test_top_fraction_orders_best_first_and_breaks_ties_by_pool_order():
    scores = np.array([0.1, 0.5, 0.5, -1.0, 0.9, 0.2, 0.5, 0.0, 0.3, 0.4])
    assert top_fraction(scores, 0.3).tolist() == [4, 1, 2]
    assert top_fraction(scores, 0.01).tolist() == [4]  # at least one
    assert len(top_fraction(scores, 1.0)) == 10


def test_selection_is_written_as_original_rows(demo_files, tmp_path):
    pool = read_pool([demo_files["pool"]])
    scores = np.linspace(0, 1, len(pool))
    chosen = top_fraction(scores, 0.1)
    info = write_selection(tmp_path, pool, chosen, scores, "rose")
    rows = [json.loads(line) for line in (tmp_path / "selected.jsonl").read_text().splitlines()]
    assert rows == [pool[i].row for i in chosen]
    assert info["n_selected"] == len(chosen) == round(0.1 * len(pool))
    assert sum(s["selected"] for s in info["sources"].values()) == len(chosen)
    assert json.loads((tmp_path / "selection.json").read_text())["selected"][0]["id"] == pool[chosen[0]].id
