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
    assert items == {"s_accuracy": [1.0, 0.0, 1.0]} and res["s_accuracy"] == pytest.approx(2 / 3)


def test_mean_at_k_averages_the_samples_of_each_problem(tok):
    engine = ScriptedEngine(tok, {"1+1": [["2"], ["2", "3", "2", "2"]],  # greedy, then k
                                  "2+2": [["4"], ["5", "4", "0", "1"]]})
    sets = {"s": [Example(problem=p, answer=a, uid=p) for p, a in
                  (("1+1=?", "2"), ("2+2=?", "4"))]}  # fmt: skip
    items = {}
    res = evaluate_all(engine, tok, sets, lambda text, answer: float(text == answer),
                       max_new_tokens=4, pass_k=2, temperature=1.0, seed=0, info=DistInfo(),
                       mean_k=4, per_problem=items)  # fmt: skip
    assert items["s_mean@4"] == [0.75, 0.25] and res["s_mean@4"] == pytest.approx(0.5)
    assert res["s_pass@2"] == 1.0  # from the first two of the same samples ("2"; "4")
    assert [n for n, _, _ in engine.calls] == [2, 2] and engine.calls[1][1] == 4


def test_the_run_reports_its_gain_on_the_same_problems(tmp_path, cache):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, steps=2, extra=["--logging.plots", "false",
                                                     "--eval.mean_k", "2"])) == 0
    summary = json.loads((run / "summary.json").read_text())
    for name, n in summary["eval_sizes"].items():
        for metric in ("accuracy", "mean@2"):
            key = f"{name}_{metric}"
            g = summary["eval_gain"][key]
            assert g["n"] == n and g["paired_se"] >= 0
            assert g["gain"] == pytest.approx(summary["eval"][key] - summary["eval_before"][key])


def test_training_prompts_are_scored_as_set_train(tmp_path, cache):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, steps=1, extra=["--logging.plots", "false",
                                                     "--eval.train_problems", "3"])) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_sizes"]["train"] == 3
    assert "train_accuracy" in summary["eval"] and "train_accuracy" in summary["eval_gain"]


def test_a_file_named_train_collides_with_the_training_set(tmp_path, cache, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"problem": "1+1=?", "answer": "2"}) + "\n")
    run = tmp_path / "run"
    code = main(tiny_args(run, cache, steps=1, extra=["--data.eval", str(data),
                                                     "--eval.train_problems", "2"]))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: eval.train_problems") and "'train'" in err
