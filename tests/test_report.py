"""The comparison summary (written into the results JSON and the report table) against hand-computed numbers."""

from __future__ import annotations

import pytest

from rose.report import method_summary, render_compare, sweep_summary, wilson_interval


def _result(method: str, group: str, acc: float, **metrics) -> dict:
    return {"method": method, "group": group, "heldout_pref_acc": acc, "n_selected": 10, "fraction": 0.05,
            "sources": {"a": {"share": 1.0}}, **metrics}


RESULTS = {
    "random-s0": _result("random", "main", 0.50, val_dpo_loss=0.70),
    "random-s1": _result("random", "main", 0.60, val_dpo_loss=0.60),
    "random-s2": _result("random", "main", 0.80),  # no validation loss recorded for this seed
    "rose": _result("rose", "main", 0.75, val_dpo_loss=0.40),
    "rose-budget-0.01": _result("rose", "budget", 0.10),  # another group: not in the main summary
}


def test_method_summary_is_the_mean_and_sample_std_over_seeds():
    summary = method_summary(RESULTS)
    assert list(summary) == ["random", "rose"]
    random = summary["random"]
    # accuracy 0.5, 0.6, 0.8: mean 19/30; squared deviations (4/30)^2, (1/30)^2, (5/30)^2 sum to 42/900, / (3 - 1)
    assert random["heldout_pref_acc"] == pytest.approx(19 / 30, abs=1e-12)
    assert random["heldout_pref_acc_std"] == pytest.approx((21 / 900) ** 0.5, abs=1e-12)
    # validation loss of two seeds, 0.7 and 0.6: mean 0.65, std |0.7 - 0.6| / sqrt(2)
    assert random["val_dpo_loss"] == pytest.approx(0.65, abs=1e-12)
    assert random["val_dpo_loss_std"] == pytest.approx(0.1 / 2 ** 0.5, abs=1e-12)
    assert random["n_runs"] == 3 and random["n_selected"] == 10 and random["fraction"] == 0.05
    rose = summary["rose"]
    assert rose["heldout_pref_acc"] == 0.75 and rose["n_runs"] == 1 and "heldout_pref_acc_std" not in rose  # one run: no spread
    assert method_summary(RESULTS, "budget") == {"rose": {"n_runs": 1, "n_selected": 10, "fraction": 0.05, "heldout_pref_acc": 0.10}}


def test_report_table_shows_the_summary():
    table = render_compare(RESULTS, "t", [], {"budget": [], "shots": []})
    assert f"| random | 10 | {19 / 30:.4f} ± {(21 / 900) ** 0.5:.4f} |" in table
    assert "| rose | 10 | 0.7500 |" in table


def test_paired_intervals_against_random_and_less_at_each_budget():
    """Hand-checkable pairs: ROSE right on all four, random (two seeds) wrong on all, LESS as ROSE but
    for one pair it loses: the differences of seed-averaged per-pair correctness have no spread."""
    results = {
        "random-s0": _result("random", "main", 0.0, heldout_correct=[0, 0, 0, 0]),
        "random-s1": _result("random", "main", 0.0, heldout_correct=[0, 0, 0, 0]),
        "less": _result("less", "main", 0.75, heldout_correct=[1, 1, 1, 0]),
        "rose": _result("rose", "main", 1.0, heldout_correct=[1, 1, 1, 1]),
        "rose-0.01": _result("rose", "budget", 1.0, heldout_correct=[1, 1, 1, 1]) | {"fraction": 0.01},
    }
    summary = method_summary(results)
    assert summary["rose"]["acc_minus_random"] == {"difference": 1.0, "low": 1.0, "high": 1.0, "n_pairs": 4}
    assert summary["rose"]["acc_minus_less"]["difference"] == 0.25 and summary["random"]["acc_minus_less"]["difference"] == -0.75
    assert "acc_minus_random" not in summary["random"] and "acc_minus_less" not in summary["less"]
    # ROSE - LESS per pair: 0, 0, 0, 1. A resample holds pair 4 no time with chance (3/4)^4 = 32%, three or
    # more times with 5.1%, four times with 0.4%: its 2.5% and 97.5% percentiles are 0 and 3/4
    less = "+0.2500 [+0.0000, +0.7500]"
    table = render_compare(results, "t", [], {"budget": ["rose", "random"], "shots": []}).splitlines()
    assert f"| rose | 10 | 1.0000 | +1.0000 [+1.0000, +1.0000] | {less} |" in table
    assert "| random |  | 0.0000 ± 0.0000 |" in table and "| rose | 1.0000 | 1.0000 |" in table  # budgets 0.01 and 0.05
    assert f"| 0.05 | rose | +1.0000 [+1.0000, +1.0000] | {less} |" in table
    assert "| 0.01 | rose |  |  |" in table  # no random or LESS at 1%: nothing to compare with


def test_shots_sweep_has_spread_over_seeds_and_intervals_at_each_shot_count():
    """Two fine-tune seeds of ROSE and one of LESS at 1 and 5 shots: mean ± std per point, and the
    paired interval against LESS from the seeds averaged pair by pair (no spread: exact bounds)."""
    def shot(method: str, shots: str, correct: list[int]) -> dict:
        return _result(method, "shots", sum(correct) / 4, heldout_correct=correct) | {"shots": shots}

    results = {
        "rose-1shot": shot("rose", "1", [1, 1, 0, 0]), "rose-ft1-1shot": shot("rose", "1", [1, 1, 1, 0]),
        "less-1shot": shot("less", "1", [1, 1, 1, 1]),
        "rose-5shot": shot("rose", "5", [1, 1, 1, 1]), "rose-ft1-5shot": shot("rose", "5", [1, 1, 1, 1]),
        "less-5shot": shot("less", "5", [0, 0, 0, 0]),
        "rose": _result("rose", "main", 0.0, heldout_correct=[0, 0, 0, 0]),  # the main group is not a shot count
    }
    by_shots = sweep_summary(results, "shots")
    assert list(by_shots) == ["1", "5"]
    assert by_shots["1"]["rose"]["heldout_pref_acc"] == 0.625 and by_shots["1"]["rose"]["n_runs"] == 2
    assert by_shots["1"]["rose"]["heldout_pref_acc_std"] == pytest.approx(0.25 / 2 ** 0.5, abs=1e-12)
    assert by_shots["5"]["rose"]["acc_minus_less"] == {"difference": 1.0, "low": 1.0, "high": 1.0, "n_pairs": 4}
    table = render_compare(results, "t", [], {"budget": [], "shots": ["rose", "less"]}).splitlines()
    assert f"| rose | 0.6250 ± {0.25 / 2 ** 0.5:.4f} | 1.0000 ± 0.0000 |" in table
    assert "| 5 | rose | +1.0000 [+1.0000, +1.0000] |" in table


def test_wilson_interval_solves_its_score_equation():
    """Each end p of the interval satisfies (share - p)^2 = z^2 p (1 - p) / n; 0.5 over 100 is the textbook 0.404-0.596."""
    assert wilson_interval(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    for share, n in [(0.62, 2114), (0.9, 40), (0.25, 8)]:
        lo, hi = wilson_interval(share, n)
        assert 0 < lo < share < hi < 1
        for p in (lo, hi):
            assert (share - p) ** 2 == pytest.approx(1.96**2 * p * (1 - p) / n, rel=1e-9)
    assert wilson_interval(1.0, 40)[1] == 1.0 and wilson_interval(1.0, 40)[0] == pytest.approx(0.9124, abs=1e-4)
