"""Human-readable output: the end-of-run table and report.md."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .selectors import SELECTORS
from .stats import LEVEL, RESAMPLES, paired_difference, spread


def table(rows: list[tuple[str, str]]) -> str:
    """A two-column text table for the terminal."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


KEY_METRICS = ("planted_precision", "base_rate", "heldout_pref_acc", "reward_margin", "length_norm_pref_acc", "val_dpo_loss",
               "golden_nll", "base_golden_nll", "judge_win_rate", "n_pairs", "n_selected", "n_pool")


def wilson_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% at z = 1.96) of a proportion observed over n trials: the
    proportions p whose score test, |share - p| <= z sqrt(p (1 - p) / n), does not reject `share`.
    Unlike share +- z sqrt(share (1 - share) / n), it stays inside [0, 1] at accuracies near 0 or 1."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (share * (1 - share) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    rows = [(k, _fmt(summary[k])) for k in KEY_METRICS if k in summary]
    if "heldout_pref_acc" in summary and summary.get("n_pairs"):
        # pairs of one prompt are not independent trials, so the interval is a little too narrow there
        lo, hi = wilson_interval(summary["heldout_pref_acc"], summary["n_pairs"])
        rows.insert([k for k, _ in rows].index("heldout_pref_acc") + 1,
                    ("heldout_pref_acc 95% CI", f"{lo:.4f} to {hi:.4f} (Wilson score interval over {summary['n_pairs']} pairs)"))
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


# ------------------------------------------------------------------------------- rose compare

COMPARE_METRICS = ("heldout_pref_acc", "reward_margin", "length_norm_pref_acc", "golden_nll", "val_dpo_loss", "judge_win_rate")


REFERENCES = ("random", "less")  # every other method's held-out accuracy is compared with theirs, pair by pair


def _summarise(by_method: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method: mean and std over its runs (seeds) of each metric, the selection size, and the
    paired bootstrap of its held-out accuracy minus each reference method's (`acc_minus_random`,
    `acc_minus_less`), where the runs carry their per-pair correctness."""
    out = {}
    for method, rows in by_method.items():
        entry = {"n_runs": len(rows), "n_selected": rows[0]["n_selected"], "fraction": rows[0]["fraction"]}
        for m in COMPARE_METRICS:
            values = [r[m] for r in rows if m in r]
            if values:
                s = spread(values)
                entry[m] = s.mean
                if s.std is not None:
                    entry[f"{m}_std"] = s.std
        for ref in REFERENCES:
            others = by_method.get(ref, [])
            if ref != method and others and all("heldout_correct" in r for r in rows + others):
                entry[f"acc_minus_{ref}"] = asdict(paired_difference([r["heldout_correct"] for r in rows],
                                                                     [r["heldout_correct"] for r in others]))
        out[method] = entry
    return out


def finished(results: dict[str, dict]) -> dict[str, dict]:
    """The variants that finished: a failed one (`compare.failed_result`) has no metrics to summarise."""
    return {name: r for name, r in results.items() if "failed" not in r}


def method_summary(results: dict[str, dict], group: str = "main") -> dict[str, dict]:
    """Per method of a group: mean and spread (std over seeds) of each metric, the selection size,
    and paired intervals of its held-out accuracy minus random's and LESS's (`_summarise`)."""
    by_method: dict[str, list[dict]] = {}
    for r in finished(results).values():
        if r["group"] == group:
            by_method.setdefault(r["method"], []).append(r)
    return _summarise(by_method)


def sweep_summary(results: dict[str, dict], group: str) -> dict[str, dict[str, dict]]:
    """{point: `_summarise` of the methods run there} for a sweep: "budget" (points are fractions;
    the main comparison is its point at select.fraction) or "shots" (points are shot counts)."""
    by_point: dict[str, dict[str, list[dict]]] = {}
    for r in finished(results).values():
        if group == "budget" and r["group"] in ("main", "budget"):
            by_point.setdefault(float(r["fraction"]), {}).setdefault(r["method"], []).append(r)
        elif group == "shots" and r["group"] == "shots":
            by_point.setdefault(int(r["shots"]), {}).setdefault(r["method"], []).append(r)
    return {f"{point:g}": _summarise(by_method) for point, by_method in sorted(by_point.items())}


def _mean_by(results: dict[str, dict], group: str, key: str, field: str = "heldout_pref_acc") -> dict[str, dict]:
    """{method: {key value: mean of field}} over a sweep group."""
    acc: dict[str, dict] = {}
    for r in results.values():
        if r["group"] == group or (group == "budget" and r["group"] == "main"):
            acc.setdefault(r["method"], {}).setdefault(r[key], []).append(r[field])
    return {m: {k: sum(v) / len(v) for k, v in sorted(d.items(), key=lambda kv: float(kv[0]))} for m, d in acc.items()}


def method_color(method: str) -> str | None:
    """One colour per method in every plot, whatever order the results came in: its place in the registry."""
    names = list(SELECTORS)
    return f"C{names.index(method) % 10}" if method in names else None


def _baseline(summary: dict, flag: str) -> str | None:
    """The first method of the comparison whose selector has `flag` set (e.g. selects_all: the full pool)."""
    return next((m for m in summary if m in SELECTORS and getattr(SELECTORS[m], flag)), None)


def compare_plots(results: dict[str, dict], out_dir: Path, budget_methods: list[str], shot_methods: list[str]) -> list[str]:
    """Bar chart with error bars, budget and few-shot lines, and DPO loss vs accuracy; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files, results = [], finished(results)
    summary = method_summary(results)
    if summary:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(summary)
        ax.bar(names, [summary[m]["heldout_pref_acc"] for m in names],
               yerr=[summary[m].get("heldout_pref_acc_std", 0) for m in names], capsize=4, color="#4c72b0")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_ylabel("held-out preference accuracy")
        ax.set_title("Selection methods at the same budget")
        fig.tight_layout()
        fig.savefig(out_dir / "accuracy.png", dpi=120)
        plt.close(fig)
        files.append("accuracy.png")
    sweeps = [
        ("budget.png", {m: v for m, v in _mean_by(results, "budget", "fraction").items() if m in budget_methods},
         lambda k: 100 * float(k), "selected share of the pool (%)", _baseline(summary, "selects_all"), "full pool", True),
        ("shots.png", {m: v for m, v in _mean_by(results, "shots", "shots").items() if m in shot_methods},
         int, "validation shots per subtask", _baseline(summary, "seeded"), "random", False),
    ]
    for name, sweep, x_of, xlabel, ref_method, ref_label, log_x in sweeps:
        if not any(len(v) > 1 for v in sweep.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for m, points in sweep.items():
            ax.plot([x_of(k) for k in points], list(points.values()), marker="o", label=m, color=method_color(m))
        if ref_method in summary:
            ax.axhline(summary[ref_method]["heldout_pref_acc"], color="grey", ls="--", lw=1, label=ref_label)
        if log_x:  # budgets span 1% to 20%: log scale, ticks labelled with the budgets themselves
            ax.set_xscale("log")
            ticks = sorted({x_of(k) for points in sweep.values() for k in points})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out preference accuracy")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        files.append(name)
    points = [r for r in results.values() if "val_dpo_loss" in r]
    if points:
        fig, ax = plt.subplots(figsize=(5, 4))
        for method in dict.fromkeys(r["method"] for r in points):
            rows = [r for r in points if r["method"] == method]
            ax.scatter([r["val_dpo_loss"] for r in rows], [r["heldout_pref_acc"] for r in rows], label=method,
                       color=method_color(method))
        ax.set_xlabel("validation DPO loss of the fine-tuned model")
        ax.set_ylabel("held-out preference accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "dpo_vs_acc.png", dpi=120)
        plt.close(fig)
        files.append("dpo_vs_acc.png")
    return files


def _cell(entry: dict, metric: str) -> str:
    if metric not in entry:
        return ""
    std = entry.get(f"{metric}_std")
    return f"{entry[metric]:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _interval(entry: dict, ref: str) -> str:
    d = entry.get(f"acc_minus_{ref}")
    return "" if d is None else f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _references(summary: dict[str, dict]) -> list[str]:
    """The reference methods some entry of a summary has paired intervals against."""
    return [ref for ref in REFERENCES if any(f"acc_minus_{ref}" in e for e in summary.values())]


def render_compare(results: dict[str, dict], title: str, images: list[str], sweep_methods: dict[str, list[str]]) -> str:
    """Markdown report of a comparison; sweep_methods: {"budget": [...], "shots": [...]} methods per sweep.
    Variants that failed are listed at the end, with their errors, and left out of every table."""
    failed = {name: r["failed"] for name, r in results.items() if "failed" in r}
    results = finished(results)
    summary = method_summary(results)
    metrics = [m for m in COMPARE_METRICS if any(m in e for e in summary.values())]
    refs = _references(summary)
    lines = [f"# {title}", "", "Mean ± standard deviation over seeds (selection seeds for random, fine-tune seeds for the "
             "others) where there are several runs. `acc − random` and `acc − less`: held-out accuracy minus that "
             f"method's, with the {LEVEL:.0%} interval of a paired bootstrap over the held-out pairs ({RESAMPLES:,} "
             "resamples; each method's seeds averaged pair by pair first).", "",
             "| method | selected | " + " | ".join(metrics + [f"acc − {ref}" for ref in refs]) + " |",
             "|---|---:|" + "---:|" * (len(metrics) + len(refs))]
    for method, e in summary.items():
        lines.append(f"| {method} | {e['n_selected']} | " + " | ".join([_cell(e, m) for m in metrics] + [_interval(e, r) for r in refs]) + " |")
    lines += [""] + [f"![{name}]({name})" for name in images]
    main = [r for r in results.values() if r["group"] == "main"]
    subtasks = sorted({s for r in main for s in r.get("per_subtask_acc", {})})
    if len(subtasks) > 1:
        lines += ["", "## Held-out accuracy per subtask", "", "| method | " + " | ".join(subtasks) + " |", "|---|" + "---:|" * len(subtasks)]
        for method in dict.fromkeys(r["method"] for r in main):
            rows = [r["per_subtask_acc"] for r in main if r["method"] == method]
            lines.append(f"| {method} | " + " | ".join(f"{sum(r[s] for r in rows) / len(rows):.3f}" for s in subtasks) + " |")
    sources = sorted({s for r in main for s in r["sources"]})
    lines += ["", "## Share of each pool source in the selection", "", "| method | " + " | ".join(sources) + " |", "|---|" + "---:|" * len(sources)]
    for method in dict.fromkeys(r["method"] for r in main):
        row = next(r for r in main if r["method"] == method)
        lines.append(f"| {method} | " + " | ".join(f"{row['sources'][s]['share']:.1%}" for s in sources) + " |")
    lines += sweep_sections(results, sweep_methods)
    if failed:
        lines += ["", "## Failed variants", ""] + [f"- {name}: {error}" for name, error in failed.items()]
    return "\n".join(lines) + "\n"


SWEEPS = {"budget": "Data budget", "shots": "Validation shots"}  # sweep group -> its section's title


def sweep_sections(results: dict[str, dict], methods: dict[str, list[str]]) -> list[str]:
    """The tables of every sweep the results have (`_sweep_tables`); methods: the methods shown per sweep."""
    lines: list[str] = []
    for group in SWEEPS:
        if any(r["group"] == group for r in results.values()):
            lines += _sweep_tables(sweep_summary(results, group), methods[group], group)
    return lines


def _sweep_tables(by_point: dict[str, dict[str, dict]], methods: list[str], group: str) -> list[str]:
    """Held-out accuracy (mean ± std over seeds) per method and sweep point, then each method's
    paired intervals against random and LESS at each point."""
    shown = [m for m in dict.fromkeys(m for summary in by_point.values() for m in summary) if m in methods]
    lines = ["", f"## {SWEEPS[group]}: held-out accuracy", "", "| method | " + " | ".join(by_point) + " |", "|---|" + "---:|" * len(by_point)]
    for method in shown:
        lines.append(f"| {method} | " + " | ".join(_cell(s.get(method, {}), "heldout_pref_acc") for s in by_point.values()) + " |")
    refs = [ref for ref in REFERENCES if any(ref in _references(s) for s in by_point.values())]
    if refs:
        lines += ["", f"| {group} | method | " + " | ".join(f"acc − {ref}" for ref in refs) + " |", "|---|---|" + "---:|" * len(refs)]
        for at, summary in by_point.items():
            for method in (m for m in shown if m in summary):
                lines.append(f"| {at} | {method} | " + " | ".join(_interval(summary[method], r) for r in refs) + " |")
    return lines
