"""Trainer plots: the trend line and the files written from metrics rows."""

from rgpo_fast.trainer.plots import moving_average, write_plots


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
