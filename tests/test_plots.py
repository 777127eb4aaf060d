"""Trainer plots: the trend line and the files written from metrics rows; the summary
table's standard errors."""

import math

import pytest

from rgpo_fast.trainer.plots import _series, moving_average, with_held_out, write_plots


def test_moving_average_hand_values():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([5.0], 3) == [5.0]
    assert moving_average([], 3) == []


def test_write_plots_from_rows(tmp_path):
    rows = [
        {"step": s, "reward/mean": s / 40, "accuracy/mean": (s % 7) / 7,
         "guided/prompts": 8 - s % 3, "guided/accepted": s % 2}
        for s in range(1, 41)
    ]
    rows[19]["eval/hard_accuracy"] = 0.25
    written = write_plots(rows, tmp_path)
    assert {p.name for p in written} == {"reward.png", "accuracy.png", "guidance.png"}
    assert all(p.stat().st_size > 1000 for p in written)
    # No data for a panel: no file, no error.
    assert write_plots([{"step": 1}], tmp_path / "empty") == []


def test_held_out_curve_runs_from_the_start_to_the_end():
    rows = [{"step": s, "accuracy/mean": 0.1} for s in range(1, 5)]
    rows[1]["eval/easy_accuracy"] = 0.35
    out = with_held_out(rows, {"easy_accuracy": 0.3}, {"easy_accuracy": 0.4}, 4)
    assert _series(out, "eval/easy_accuracy") == ([0, 2, 4], [0.3, 0.35, 0.4])
    assert _series(out, "accuracy/mean")[0] == [1, 2, 3, 4]  # training points unchanged


def test_summary_table_gives_standard_errors():
    from rgpo_fast.trainer.metrics import standard_error, summary_table

    assert standard_error(0.5, 100) == 0.05 and standard_error(0.0, 10) == 0.0
    text = summary_table({"eval": {"easy_accuracy": 0.5}, "eval_before": {"easy_accuracy": 0.3},
                          "eval_sizes": {"easy": 100}, "totals": {}, "steps": 1})
    assert "0.300 ± 0.046" in text and "0.500 ± 0.050" in text


def test_summary_table_mean_at_k_error_is_that_of_the_per_problem_values():
    from rgpo_fast.trainer.metrics import mean_and_se, summary_table

    values = [0.25, 0.5, 0.75, 0.5]  # mean@4 of four problems
    m, se = mean_and_se(values)
    assert m == 0.5 and se == pytest.approx(math.sqrt(1 / 24 / 4))
    text = summary_table({"eval": {"easy_mean@4": 0.5}, "eval_before": {"easy_mean@4": 0.5},
                          "eval_items": {"after": {"easy_mean@4": values}},
                          "eval_sizes": {"easy": 4}, "totals": {"guided/accepted": 4.0,
                                                               "guided/copies": 1.0},
                          "steps": 1})
    # after: the per-problem error (0.102), not the binomial one of 0.5 on 4 (0.250)
    assert f"0.500 ± {se:.3f}" in text and "0.500 ± 0.250" in text  # before: binomial
    assert "1 (25 %)" in text  # copies among the accepted guided solutions
