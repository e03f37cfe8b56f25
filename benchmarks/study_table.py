"""Print the selection study's table (docs/results.md) from a results JSON of `rose compare`.

    python benchmarks/study_table.py docs/results/study/shp.json

One row per method or ablation of the main comparison, best mean held-out accuracy first: mean ±
std over its runs (fine-tune seeds; selection seeds for random), the paired 95% bootstrap interval
of its accuracy minus random's and minus LESS's (`rose.stats`, over the held-out pairs, seeds
averaged pair by pair), its validation DPO loss and the chat source's share of its selection.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rose.report import method_summary


def interval(entry: dict | None) -> str:
    if not entry:
        return ""
    return f"{entry['difference']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]"


def chat_share(results: dict, method: str) -> float | None:
    shares = [r["sources"]["chat"]["share"] for r in results.values()
              if r["group"] == "main" and r["method"] == method and "chat" in r.get("sources", {})]
    return sum(shares) / len(shares) if shares else None


def study_rows(results: dict) -> list[dict]:
    summary = method_summary(results)
    rows = []
    for method, e in summary.items():
        rows.append({"method": method, "runs": e["n_runs"], "accuracy": e["heldout_pref_acc"], "std": e.get("heldout_pref_acc_std"),
                     "minus_random": e.get("acc_minus_random"), "minus_less": e.get("acc_minus_less"),
                     "val_dpo_loss": e.get("val_dpo_loss"), "chat_share": chat_share(results, method)})
    return sorted(rows, key=lambda r: -r["accuracy"])


def render(rows: list[dict]) -> str:
    lines = ["| method | runs | held-out acc. (mean ± std) | minus random [95% CI] | minus LESS [95% CI] | val. DPO loss | chat share |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        std = f" ± {r['std']:.4f}" if r["std"] is not None else ""
        chat = f"{r['chat_share']:.0%}" if r["chat_share"] is not None else ""
        loss = f"{r['val_dpo_loss']:.3f}" if r["val_dpo_loss"] is not None else ""
        lines.append(f"| {r['method']} | {r['runs']} | {r['accuracy']:.4f}{std} | {interval(r['minus_random'])} | "
                     f"{interval(r['minus_less'])} | {loss} | {chat} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a results JSON written by rose compare (compare.results_json)")
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    print(render(study_rows(data["variants"])))


if __name__ == "__main__":
    main()
