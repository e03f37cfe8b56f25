"""Print the selection study's tables (docs/results.md) from results JSONs of `rose compare`.

    python benchmarks/study_table.py docs/results/study/shp.json
    python benchmarks/study_table.py docs/results/study/shp.json docs/results/study/hh.json --rule

One row per method or ablation of the main comparison, best mean held-out accuracy first (then the
budget and few-shot sweeps' tables where the file has them): mean ±
std over its runs (fine-tune seeds; selection seeds for random), the paired 95% bootstrap interval
of its accuracy minus random's and minus LESS's (`rose.stats`, over the held-out pairs, seeds
averaged pair by pair), its validation DPO loss and the chat source's share of its selection.

With --rule and several tasks' files, also the decision table of the rule stated in
docs/results.md: each candidate's gain over LESS per task and their mean, and whether its
interval against random lies above 0 on every task; eligible candidates first, highest mean first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rose.report import SWEEPS, method_summary, sweep_sections


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


RULE_CANDIDATES = ("rose-paper", "hybrid")   # plus every rose-* ablation


def rule_rows(tasks: dict[str, dict]) -> list[dict]:
    """The pre-stated rule: highest mean gain over LESS among variants above random on every task."""
    summaries = {task: method_summary(results) for task, results in tasks.items()}
    common = set.intersection(*(set(s) for s in summaries.values()))
    rows = []
    for method in sorted(m for m in common if m in RULE_CANDIDATES or m.startswith("rose-")):
        gains = {task: s[method]["acc_minus_less"]["difference"] for task, s in summaries.items()}
        above = all(s[method]["acc_minus_random"]["low"] > 0 for s in summaries.values())
        rows.append({"method": method, "gains": gains, "mean": sum(gains.values()) / len(gains), "eligible": above})
    return sorted(rows, key=lambda r: (not r["eligible"], -r["mean"]))


def render_rule(rows: list[dict]) -> str:
    tasks = list(rows[0]["gains"])
    lines = ["| variant | " + " | ".join(f"{t}: minus LESS" for t in tasks) + " | mean | above random on every task |",
             "|---|" + "---:|" * (len(tasks) + 1) + "---|"]
    for r in rows:
        gains = " | ".join(f"{r['gains'][t]:+.4f}" for t in tasks)
        lines.append(f"| {r['method']} | {gains} | {r['mean']:+.4f} | {'yes' if r['eligible'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="results JSONs written by rose compare (compare.results_json)")
    parser.add_argument("--rule", action="store_true", help="also print the decision table of the rule across the files")
    args = parser.parse_args()
    tasks = {path.stem: json.loads(path.read_text())["variants"] for path in args.results}
    for task, results in tasks.items():
        if len(tasks) > 1:
            print(f"\n{task}")
        print(render(study_rows(results)))
        methods = list(dict.fromkeys(r["method"] for r in results.values()))
        if sweeps := sweep_sections(results, dict.fromkeys(SWEEPS, methods)):
            print("\n".join(sweeps))
    if args.rule:
        print("\nthe rule (docs/results.md)")
        print(render_rule(rule_rows(tasks)))


if __name__ == "__main__":
    main()
