"""How much of each selection comes from one pool source, against the tuned model's held-out accuracy.

Reads the variants of finished comparisons (`docs/results/<task>/variants.json`) and prints, per task:
- the source's share of each method's selection: at the main budget (mean over random seeds),
  at each budget of the budget sweep and at each shot count of the shots sweep, and its share of
  the whole pool (the full-pool run);
- the Pearson and Spearman correlation between that share and held-out preference accuracy over
  the distinct runs. A run listed under two names counts once (with the 5-shot set as the main
  validation set, the shots sweep's 5-shot cell is the main run itself). The full-pool run is
  left out: it selects nothing. `--reruns FOLDER` adds the runs of `FOLDER/<task>.json` (the
  5% comparison rerun with later code) to a second correlation.
Draws one scatter per task of the distinct runs (one colour per method, as in the compare report)
and writes the figures as JSON.

    python benchmarks/source_vs_accuracy.py --source chat --reruns docs/results/rerun_current --out docs/results/source_vs_accuracy
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

LABELS = ("group", "method", "fraction", "seed", "shots")  # what names a run, not what it measured


def distinct(variants: dict[str, dict]) -> list[dict]:
    """The variants with a run listed under two names kept once (same selection and metrics)."""
    seen, out = set(), []
    for v in variants.values():
        key = json.dumps({k: x for k, x in v.items() if k not in LABELS}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def ranks(x: list[float]) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank (as Spearman's coefficient needs)."""
    x = np.asarray(x)
    order = np.empty(len(x))
    order[x.argsort(kind="stable")] = np.arange(len(x))
    return np.array([order[x == value].mean() for value in x])


def correlation(x: list[float], y: list[float]) -> dict:
    """Pearson and Spearman correlation of paired per-run values (ties share their mean rank)."""
    return {"n_runs": len(x), "pearson": float(np.corrcoef(x, y)[0, 1]),
            "spearman": float(np.corrcoef(ranks(x), ranks(y))[0, 1])}


def share_vs_accuracy(rows: list[dict], source: str) -> dict:
    """`correlation` of the source's share of each run's selection with the run's held-out accuracy."""
    return correlation([v["sources"][source]["share"] for v in rows], [v["heldout_pref_acc"] for v in rows])


def shares(variants: dict[str, dict], source: str) -> dict:
    """Per method: the source's share at the main budget, per budget and per shot count (means over seeds)."""
    def mean_by(rows: list[dict], key: str) -> dict:
        groups: dict = {}
        for v in rows:
            groups.setdefault(v[key], []).append(v["sources"][source]["share"])
        return {k: float(np.mean(s)) for k, s in sorted(groups.items(), key=lambda kv: float(kv[0]))}

    out = {}
    for method in dict.fromkeys(v["method"] for v in variants.values() if v["method"] != "full"):
        rows = [v for v in variants.values() if v["method"] == method]
        main = [v["sources"][source]["share"] for v in rows if v["group"] == "main"]
        out[method] = {"main": float(np.mean(main)) if main else None,
                       "budgets": mean_by([v for v in rows if v["shots"] is None], "fraction"),
                       "shots": mean_by([v for v in rows if v["group"] == "shots"], "shots")}
    return out


def print_task(task: str, source: str, summary: dict) -> None:
    print(f"{task}: {source} share vs held-out accuracy over {summary['n_runs']} distinct runs "
          f"({summary['n_listed']} listed, the full pool left out): "
          f"Pearson {summary['pearson']:+.3f}, Spearman {summary['spearman']:+.3f}")
    if "with_reruns" in summary:
        r = summary["with_reruns"]
        print(f"{task}: with the {r['n_runs'] - summary['n_runs']} reruns added: {r['n_runs']} runs, "
              f"Pearson {r['pearson']:+.3f}, Spearman {r['spearman']:+.3f}")
    print(f"{task}: {source} share of each selection: main budget | by budget | by shots")
    for method, s in summary["shares"].items():
        main = f"{s['main']:6.1%}" if s["main"] is not None else "     -"
        budgets = "  ".join(f"{k:g}: {x:.1%}" for k, x in s["budgets"].items())
        shots = "  ".join(f"{k}: {x:.1%}" for k, x in s["shots"].items())
        print(f"  {method:10s} {main} | {budgets} | {shots}")
    if summary["pool_share"] is not None:
        print(f"  {'full pool':10s} {summary['pool_share']:6.1%}")
    for method, s in summary.get("rerun_shares", {}).items():
        print(f"  rerun {method:20s} {s:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["shp", "hh"])
    parser.add_argument("--results", default="docs/results", help="folder holding <task>/variants.json")
    parser.add_argument("--reruns", help="folder holding <task>.json with more runs of the same tasks (a rerun)")
    parser.add_argument("--source", default="chat", help="pool source whose share is plotted")
    parser.add_argument("--out", required=True, help="output path without suffix: writes .png and .json")
    args = parser.parse_args()

    fig, axes = plt.subplots(1, len(args.tasks), figsize=(5 * len(args.tasks), 4), squeeze=False)
    summary = {}
    for ax, task in zip(axes[0], args.tasks):
        variants = json.loads((Path(args.results) / task / "variants.json").read_text())
        listed = [v for v in variants.values() if v["method"] != "full"]
        rows = distinct({k: v for k, v in variants.items() if v["method"] != "full"})
        full = [v for v in variants.values() if v["method"] == "full"]
        summary[task] = {"n_listed": len(listed), **share_vs_accuracy(rows, args.source), "shares": shares(variants, args.source),
                         "pool_share": full[0]["sources"][args.source]["share"] if full else None}
        if args.reruns:
            reruns = json.loads((Path(args.reruns) / f"{task}.json").read_text())
            summary[task]["with_reruns"] = share_vs_accuracy(rows + list(reruns.values()), args.source)
            summary[task]["rerun_shares"] = {k: v["sources"][args.source]["share"] for k, v in reruns.items()}
        print_task(task, args.source, summary[task])
        for method in dict.fromkeys(v["method"] for v in rows):
            pts = [(v["sources"][args.source]["share"], v["heldout_pref_acc"]) for v in rows if v["method"] == method]
            ax.scatter(*zip(*pts), label=method, color=METHOD_COLORS.get(method))
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{task.upper()}: Pearson {summary[task]['pearson']:+.2f} over {len(rows)} runs")
        ax.set_xlabel(f"share of {args.source} in the selection")
        ax.set_ylabel("held-out preference accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    fig.savefig(out.with_suffix(".png"), dpi=120)
    out.with_suffix(".json").write_text(json.dumps({"source": args.source, "tasks": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
