"""How much of each selection comes from one pool source, against the tuned model's held-out accuracy.

Reads the variants of finished comparisons (`docs/results/<task>/variants.json`), prints each
task's Pearson and Spearman correlation between a source's share and held-out preference
accuracy, and draws one scatter per task (one colour per method, as in the compare report). The
full-pool run is left out: it selects nothing, so its shares are the pool's own.

    python benchmarks/source_vs_accuracy.py --source chat --out docs/results/source_vs_accuracy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from rose.report import METHOD_COLORS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["shp", "hh"])
    parser.add_argument("--results", default="docs/results", help="folder holding <task>/variants.json")
    parser.add_argument("--source", default="chat", help="pool source whose share is plotted")
    parser.add_argument("--out", required=True, help="output path without suffix: writes .png and .json")
    args = parser.parse_args()

    fig, axes = plt.subplots(1, len(args.tasks), figsize=(5 * len(args.tasks), 4), squeeze=False)
    summary = {}
    for ax, task in zip(axes[0], args.tasks):
        variants = json.loads((Path(args.results) / task / "variants.json").read_text())
        rows = [v for v in variants.values() if args.source in v["sources"] and v["method"] != "full"]
        share = [v["sources"][args.source]["share"] for v in rows]
        acc = [v["heldout_pref_acc"] for v in rows]
        ranks = [np.argsort(np.argsort(x)) for x in (share, acc)]
        summary[task] = {"n_variants": len(rows), "pearson": float(np.corrcoef(share, acc)[0, 1]),
                         "spearman": float(np.corrcoef(*ranks)[0, 1])}
        for method in dict.fromkeys(v["method"] for v in rows):
            pts = [(s, a) for s, a, v in zip(share, acc, rows) if v["method"] == method]
            ax.scatter(*zip(*pts), label=method, color=METHOD_COLORS.get(method))
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{task.upper()}: Pearson {summary[task]['pearson']:+.2f} over {len(rows)} runs")
        ax.set_xlabel(f"share of {args.source} in the selection")
        ax.set_ylabel("held-out preference accuracy")
        ax.legend(fontsize=8)
        print(f"{task}: {args.source} share vs held-out accuracy over {len(rows)} runs: "
              f"Pearson {summary[task]['pearson']:+.3f}, Spearman {summary[task]['spearman']:+.3f}")
    fig.tight_layout()
    out = Path(args.out)
    fig.savefig(out.with_suffix(".png"), dpi=120)
    out.with_suffix(".json").write_text(json.dumps({"source": args.source, "tasks": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
