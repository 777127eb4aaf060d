"""Held-out evaluation's per-problem outcomes and the paired gain the run reports."""

import json
import math

import pytest
from scripted import ScriptedEngine

from rgpo_fast.data.types import Example
from rgpo_fast.train import main
from rgpo_fast.trainer.distributed import DistInfo
from rgpo_fast.trainer.evaluation import evaluate_all
from rgpo_fast.trainer.metrics import paired_gain
from rgpo_fast.trainer.testing import tiny_args


def test_paired_gain_by_hand():
    gain, se = paired_gain([1, 0, 1, 0], [1, 1, 1, 0])  # differences 0, 1, 0, 0
    assert gain == pytest.approx(0.25)
    assert se == pytest.approx(0.5 / 2)  # sd 0.5 (n - 1 in the variance), / sqrt(4)
    assert paired_gain([1, 1], [1, 1]) == (0.0, 0.0)  # the same outcomes: no noise at all
    assert math.isnan(paired_gain([1], [0])[1])
    with pytest.raises(ValueError, match="differ in length"):
        paired_gain([1, 0], [1])


def test_per_problem_outcomes_follow_the_set_order(tok):
    engine = ScriptedEngine(tok, {"1+1": ["2"], "2+2": ["5"], "3+3": ["6"]})
    sets = {"s": [Example(problem=p, answer=a, uid=p) for p, a in
                  (("1+1=?", "2"), ("2+2=?", "4"), ("3+3=?", "6"))]}  # fmt: skip
    items = {}
    res = evaluate_all(engine, tok, sets, lambda text, answer: float(text == answer),
                       max_new_tokens=4, pass_k=0, temperature=1.0, seed=0, info=DistInfo(),
                       per_problem=items)  # fmt: skip
    assert items == {"s": [1.0, 0.0, 1.0]} and res["s_accuracy"] == pytest.approx(2 / 3)


def test_the_run_reports_its_gain_on_the_same_problems(tmp_path, cache):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, steps=2, extra=["--logging.plots", "false"])) == 0
    summary = json.loads((run / "summary.json").read_text())
    for name, n in summary["eval_sizes"].items():
        g = summary["eval_gain"][f"{name}_accuracy"]
        before = summary["eval_before"][f"{name}_accuracy"]
        assert g["n"] == n and g["gain"] == pytest.approx(summary["eval"][f"{name}_accuracy"]
                                                          - before)  # fmt: skip
        assert g["paired_se"] >= 0
