"""Validation DPO loss of each fine-tuned model against its held-out preference accuracy.

Does fitting the few validation pairs (what a selection aims at) carry over to the held-out pairs?
Reads the variants of finished comparisons (`docs/results/<task>/variants.json`) and prints, per
task, the Pearson and Spearman correlation over the distinct runs (a run listed under two names
counts once, as in `source_vs_accuracy.py`). The full-pool fine-tune counts like any other run:
it has a validation loss and a held-out accuracy. The scatter is `docs/results/<task>/dpo_vs_acc.png`
(drawn by the compare report).

    python benchmarks/dpo_loss_vs_accuracy.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from source_vs_accuracy import correlation, distinct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["shp", "hh"])
    parser.add_argument("--results", default="docs/results", help="folder holding <task>/variants.json")
    args = parser.parse_args()
    for task in args.tasks:
        variants = json.loads((Path(args.results) / task / "variants.json").read_text())
        rows = distinct(variants)
        c = correlation([v["val_dpo_loss"] for v in rows], [v["heldout_pref_acc"] for v in rows])
        print(f"{task}: validation DPO loss vs held-out accuracy over {c['n_runs']} distinct runs "
              f"({len(variants)} listed, the full pool included): Pearson {c['pearson']:+.3f}, Spearman {c['spearman']:+.3f}")


if __name__ == "__main__":
    main()
