"""Human-readable output: the end-of-run table and report.md."""

from __future__ import annotations

from pathlib import Path

from .store import MANIFEST, read_json

STAGE_FOLDERS = {
    "warmup": "warmup",
    "train-grads": "grads/train",
    "val-grads": "grads/val",
    "score": "scores",
    "select": "selection",
    "finetune": "finetune",
    "evaluate": "eval",
}


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall time each completed stage recorded in its manifest."""
    out = {}
    for stage, folder in STAGE_FOLDERS.items():
        file = Path(run_dir) / folder / MANIFEST
        if file.is_file():
            seconds = read_json(file).get("seconds")
            if seconds is not None:
                out[stage] = round(float(seconds), 1)
    return out


def table(rows: list[tuple[str, str]]) -> str:
    """A two-column text table for the terminal."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


KEY_METRICS = ("planted_precision", "base_rate", "heldout_pref_acc", "reward_margin", "golden_nll", "base_golden_nll", "n_pairs", "n_selected", "n_pool")


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    rows = [(k, _fmt(summary[k])) for k in KEY_METRICS if k in summary]
    rows += [(f"time {k}", f"{v:.1f} s") for k, v in summary.get("stage_seconds", {}).items()]
    if "total_seconds" in summary:
        rows.append(("time total", f"{summary['total_seconds']:.1f} s"))
    return rows


def render_report(summary: dict) -> str:
    lines = [f"# rose run: {summary.get('run_dir', '')}", "", f"Model: `{summary.get('model', '')}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(summary)]
    if "sources" in summary:
        lines += ["", "## Selection by pool source", "", "| source | in pool | selected | share of selection |", "|---|---:|---:|---:|"]
        for src, c in summary["sources"].items():
            lines.append(f"| {src} | {c['pool']} | {c['selected']} | {c['share']:.1%} |")
    if summary.get("per_subtask_acc"):
        lines += ["", "## Held-out preference accuracy by subtask", "", "| subtask | accuracy |", "|---|---:|"]
        lines += [f"| {s} | {a:.3f} |" for s, a in summary["per_subtask_acc"].items()]
    if summary.get("notes"):
        lines += ["", *summary["notes"]]
    return "\n".join(lines) + "\n"
