"""benchmarks/learning.py: the pure parts (curves, seeds, steps-to-reach, table) on
synthetic metrics; no training run."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_learning",
                                               ROOT / "benchmarks" / "learning.py")
L = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = L  # dataclasses look their module up
_spec.loader.exec_module(L)


def synthetic_run(hard: list[float], easy: list[float], every: int = 5, tok_per_step: float = 100.0,
                  guided: float = 0.0) -> tuple[list[dict], dict]:
    """metrics.jsonl rows and summary.json of a run whose eval points are 0, every, ..., last.
    hard/easy[0] is the warm start, [-1] the final eval (written to summary only)."""
    steps = every * (len(hard) - 1)
    rows = []
    for s in range(1, steps + 1):
        r = {"step": s, "reward/mean": s / steps, "tokens/generated": tok_per_step,
             "guided/prompts": guided}
        if s % every == 0 and s < steps:
            r["eval/hard_accuracy"] = hard[s // every]
            r["eval/easy_accuracy"] = easy[s // every]
        rows.append(r)
    summary = {"steps": steps, "eval_before": {"hard_accuracy": hard[0], "easy_accuracy": easy[0]},
               "eval": {"hard_accuracy": hard[-1], "easy_accuracy": easy[-1]},
               "totals": {"guided/prompts": guided * steps, "guided/accepted": 0.0}, "time_s": 10.0}
    return rows, summary


def test_curve_from_rows_eval_points_and_tokens():
    rows, summary = synthetic_run([0.0, 0.1, 0.2], [0.5, 0.5, 0.6], every=5, tok_per_step=10)
    c = L.curve_from_rows(rows, summary)
    assert c.eval_steps == [0, 5, 10]
    assert c.eval_tokens == [0.0, 50.0, 100.0]
    assert c.hard == [0.0, 0.1, 0.2] and c.easy == [0.5, 0.5, 0.6]
    assert c.steps == list(range(1, 11)) and c.tokens[-1] == 100.0
    assert c.reward[-1] == pytest.approx(1.0)


def test_read_curve_from_files(tmp_path):
    rows, summary = synthetic_run([0.0, 0.3], [0.5, 0.4], every=4)
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    c = L.read_curve(tmp_path)
    assert c.eval_steps == [0, 4] and c.hard == [0.0, 0.3]


def test_mean_std_is_sample_std():
    assert L.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))
    assert L.mean_std([0.4]) == (0.4, 0.0)
    m, s = L.mean_std([])
    assert math.isnan(m) and math.isnan(s)


def test_aggregate_over_seeds():
    curves = [L.curve_from_rows(*synthetic_run(h, [0.5, 0.5, 0.5], tok_per_step=t))
              for h, t in (([0.0, 0.1, 0.2], 100), ([0.0, 0.3, 0.4], 200))]
    a = L.aggregate(curves)
    assert a.n_seeds == 2 and a.eval_steps == [0, 5, 10]
    assert a.hard == pytest.approx([0.0, 0.2, 0.3])
    assert a.hard_std[1] == pytest.approx(math.sqrt(0.02))
    assert a.final_hard[0] == pytest.approx(0.3)
    assert a.per_seed_final_hard == [0.2, 0.4]
    assert a.eval_tokens == pytest.approx([0.0, 750.0, 1500.0])  # mean of the two seeds
    assert a.total_tokens[0] == pytest.approx(1500.0)


def test_first_reach_and_budget():
    xs, ys = [0, 5, 10, 15], [0.0, 0.1, 0.25, 0.2]
    assert L.first_reach(xs, ys, 0.2) == 10
    assert L.first_reach(xs, ys, 0.25) == 10
    assert L.first_reach(xs, ys, 0.3) is None
    assert L.first_reach(xs, ys, 0.0) == 0
    assert L.first_reach(xs, [math.nan, 0.3, 0.3, 0.3], 0.3) == 5
    assert L.value_at_budget([0, 100, 200], [0.0, 0.1, 0.2], 150) == 0.1
    assert L.value_at_budget([0, 100, 200], [0.0, 0.1, 0.2], 200) == 0.2
    assert math.isnan(L.value_at_budget([10, 20], [0.1, 0.2], 5))


def _rows():
    vs = [L.Variant("grpo", "grpo"), L.Variant("rgpo", "rgpo", note="sft_coef=0.1"),
          L.Variant("rgpo: transfer=is", "rgpo", ablation=True)]
    runs = {
        "grpo": [([0.0, 0.02, 0.04, 0.06, 0.08], 100), ([0.0, 0.0, 0.02, 0.04, 0.08], 100)],
        "rgpo": [([0.0, 0.1, 0.15, 0.2, 0.2], 150), ([0.0, 0.06, 0.1, 0.16, 0.2], 170)],
        "rgpo: transfer=is": [([0.0, 0.0, 0.0, 0.02, 0.04], 150)] * 2,
    }
    aggs = {n: L.aggregate([L.curve_from_rows(*synthetic_run(h, [0.5] * 5, tok_per_step=t))
                            for h, t in rs]) for n, rs in runs.items()}
    return vs, aggs


def test_summarize_steps_and_tokens_to_reach():
    vs, aggs = _rows()
    rows, target, base_tokens = L.summarize(aggs, vs)
    assert target == pytest.approx(0.08) and base_tokens == pytest.approx(2000.0)
    by = {r.name: r for r in rows}
    assert by["grpo"].steps_to_target == 20
    assert by["rgpo"].steps_to_target == 5  # mean curve 0.08 at step 5
    assert by["rgpo"].tokens_to_target == pytest.approx(5 * 160.0)
    assert by["rgpo: transfer=is"].steps_to_target is None
    # hard accuracy at grpo's token spend (2000): rgpo has spent 160/step -> last eval <= 2000
    assert by["rgpo"].hard_at_base_tokens == pytest.approx(0.125)  # step 10: (0.15 + 0.10) / 2


def _curve_with_items(hard: list[float], easy: list[float]) -> "L.Curve":
    rows, summary = synthetic_run([0.0, sum(hard) / len(hard)], [0.5, sum(easy) / len(easy)])
    summary["eval_items"] = {"after": {"hard_mean@8": hard, "easy_mean@8": easy}}
    return L.curve_from_rows(rows, summary)


def test_paired_difference_pairs_problems_over_seeds():
    base = {0: _curve_with_items([0.0, 0.5, 1.0, 0.0], [1.0] * 4),
            1: _curve_with_items([0.0, 0.0, 1.0, 0.5], [1.0] * 4)}
    run = {0: _curve_with_items([0.5, 0.5, 1.0, 0.5], [1.0] * 4),
           1: _curve_with_items([0.0, 0.5, 1.0, 0.5], [0.5] * 4)}
    # per-problem differences averaged over the seeds: 0.25, 0.25, 0, 0.25
    g, se, n = L.paired_difference(run, base, "hard_mean@8")
    assert n == 4 and g == pytest.approx(0.1875)
    assert se == pytest.approx(math.sqrt(sum((d - 0.1875) ** 2 for d in (0.25, 0.25, 0, 0.25))
                                         / 3 / 4))
    assert L.paired_difference({2: run[0]}, base, "hard_mean@8") is None  # no common seed
    paired = L.paired_to_baseline({"grpo": base, "rgpo": run}, "mean@8")
    assert paired["rgpo"]["easy"][0] == pytest.approx(-0.25)
    assert paired["rgpo"]["hard_greedy"] is None  # no greedy per-problem values here
    assert paired["rgpo"]["seeds"][0]["hard"][0] == pytest.approx(0.25)
    checks = L.target_checks(paired)
    assert [ok for _, ok, _ in checks] == [True, False]  # +18.8 > 2 s.e.; easy -25 points
    assert "+18.8 ± " in checks[0][2]


def test_markdown_table_and_file(tmp_path):
    vs, aggs = _rows()
    rows, target, _ = L.summarize(aggs, vs)
    paired = {"rgpo": {"hard": (0.05, 0.01, 256), "easy": (-0.01, 0.01, 256),
                       "hard_greedy": (0.078, 0.022, 256),
                       "seeds": {0: {"hard": (0.04, 0.02, 256)}, 1: {"hard": (0.06, 0.02, 256)}}}}
    table = L.markdown_table(rows, target, 20, "accuracy", paired)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "rgpo (sft_coef=0.1)" in table and "not reached / 20" in table
    assert "20.0 ± 0.0" in table  # rgpo final hard, both seeds 0.2
    assert "| +5.0 ± 1.0 | -1.0 ± 1.0 |" in table
    assert "(+7.8 ± 2.2)" in table  # greedy hard beside its paired difference
    md = L.write_markdown(tmp_path / "x.md", rows, target, L.QUICK, "cmd", {"git": "abc"},
                          paired)
    assert (tmp_path / "x.md").read_text() == md
    assert "- [x] rgpo above grpo on held-out hard by >= 3 points" in md
    assert "| rgpo | +4.0 ± 2.0 | +6.0 ± 2.0 |" in md  # per seed
    assert "copies=once" in md


def test_plot_writes_png(tmp_path):
    vs, aggs = _rows()
    L.plot(aggs, vs, tmp_path / "c.png", "synthetic")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_every_variant_is_a_valid_trainer_config(tmp_path):
    from rgpo_fast.trainer.cli import parse_args

    s = L.FULL
    names = [v.name for v in L.variants(s)]
    assert [v.name for v in L.variants(s) if v.core] == [
        "grpo", "rgpo", "rgpo: copies=train", "rgpo: copies=drop", "rgpo: one level per visit"]
    assert {"dapo", "ghpo", "luffy"} <= set(names) and len(set(names)) == len(names) == 11
    seen = set()
    for v in L.variants(s):
        _, cfg = parse_args(L.train_args(v, 1, s, tmp_path / "model", tmp_path / "out"))
        assert cfg.train.sft_steps == 0 and cfg.model.path == str(tmp_path / "model")
        assert cfg.train.max_steps == s.steps and cfg.optim.lr == s.lr
        assert cfg.eval.every == s.eval_every and cfg.rollout.n == s.group_size
        assert cfg.eval.mean_k == s.eval_mean_k == 8 and cfg.eval.train_problems == s.eval_train
        if v.algo == "rgpo":
            assert cfg.algo.sft_coef == s.sft_coef  # the same for every RGPO variant
            assert cfg.algo.hint_placement == s.hint_placement
            assert cfg.algo.n_segments is None  # one level per solution step
        assert cfg.data.train == s.train_data and cfg.data.eval == s.eval_data
        seen.add((cfg.algo.name, cfg.algo.transfer, cfg.algo.acceptance, cfg.algo.adaptive_levels,
                  cfg.algo.copies, cfg.algo.hint_escalation))
    assert ("rgpo", "is", "beat_all", True, "once", "round") in seen
    assert ("rgpo", "sft", "any_success", True, "once", "round") in seen
    assert ("rgpo", "sft", "beat_all", False, "once", "round") in seen
    for rule in ("train", "once", "drop"):
        assert ("rgpo", "sft", "beat_all", True, rule, "round") in seen
    assert ("rgpo", "sft", "beat_all", True, "once", "visit") in seen


def test_probe_table_in_markdown(tmp_path):
    vs, aggs = _rows()
    rows, target, base_tokens = L.summarize(aggs, vs)
    probe = [{"level": 0, "sample_success": 0.05, "pass@8": 0.1},
             {"level": 1, "sample_success": 0.2, "pass@8": 0.5}]
    table = L.probe_table(probe)
    assert table.splitlines()[0] == "| hint level (segments shown) | sample_success % | pass@8 % |"
    assert "| 1 | 20.0 | 50.0 |" in table
    md = L.write_markdown(tmp_path / "y.md", rows, target, L.FULL, "cmd", {}, {}, probe)
    assert table in md and "![learning curves](y.png)" in md


def test_warm_start_reach_is_labelled():
    vs = [L.Variant("grpo", "grpo"), L.Variant("rgpo", "rgpo")]
    aggs = {n: L.aggregate([L.curve_from_rows(*synthetic_run(h, [0.8] * 3))])
            for n, h in (("grpo", [0.02, 0.0, 0.02]), ("rgpo", [0.02, 0.03, 0.04]))}
    rows, target, _ = L.summarize(aggs, vs)
    assert target == pytest.approx(0.02)
    assert {r.name: r.steps_to_target for r in rows} == {"grpo": 0, "rgpo": 0}
    assert "0 (warm start) / 10" in L.markdown_table(rows, target, 10, "accuracy", {})
    assert L.target_checks({}) == []  # nothing paired: no claim


def test_wall_time_text_says_whether_the_warm_start_was_made():
    made = L.wall_time_text({"wall_s": 1674.0, "warm_start_s": 204.0, "runs": 24, "reused": 0})
    assert made == "27.9 min (warm start made in this pass: 3.4 min; 24 runs, 0 reused)"
    assert L.wall_time_text({"wall_s": 60.0, "warm_start_s": None}) == "1.0 min (warm start cached)"


def test_sft_coef_sweep_reuses_the_main_rgpo_runs_and_adds_the_others():
    vs = L.sft_coef_variants(L.FULL, ["0.1", "1.0", "0.3"])
    assert [v.name for v in vs] == ["grpo", "rgpo", "rgpo sft_coef=1.0", "rgpo sft_coef=0.3"]
    main = next(v for v in L.variants(L.FULL) if v.name == "rgpo")
    assert vs[1] == main  # same variant -> same run directory and arguments -> reused
    assert ("algo.sft_coef", "0.3") in vs[3].overrides
    assert ("algo.hint_placement", "response") in vs[3].overrides  # only the weight differs
    assert len({L.slug(v.name) for v in vs}) == len(vs)  # no run directory shared


def test_compare_runs_pairs_problems_by_seed(tmp_path):
    """benchmarks/compare_runs.py: per-seed paired differences and the per-problem average
    over seeds, by hand on two seeds of three problems."""
    spec = importlib.util.spec_from_file_location("compare_runs",
                                                  ROOT / "benchmarks" / "compare_runs.py")
    C = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(C)

    def run(name, before, after):
        d = tmp_path / name
        d.mkdir()
        items = {"before": {"easy_mean@8": before}, "after": {"easy_mean@8": after}}
        (d / "summary.json").write_text(json.dumps({"eval_items": items}))
        return d

    base = [run("g0", [0.0, 0.5, 1.0], [0.0, 0.5, 1.0]), run("g1", [0, 0, 0], [0.5, 0.5, 0.5])]
    var = [run("s0", [0.0, 0.5, 1.0], [0.5, 0.5, 1.0]), run("s1", [0, 0, 0], [0.5, 1.0, 1.0])]
    r = C.compare([C.load_items(d) for d in base], [C.load_items(d) for d in var], "easy_mean@8")
    d0, se0 = r["seeds"][0]["difference"]
    assert d0 == pytest.approx(0.5 / 3) and se0 == pytest.approx(math.sqrt(1 / 12) / math.sqrt(3))
    assert r["seeds"][1]["variant"] == pytest.approx(2.5 / 3)
    # per problem, averaged over the seeds: (0.25, 0.25, 0.25) -> 0.25 with s.e. 0
    assert r["over_seeds"] == (pytest.approx(0.25), pytest.approx(0.0))
    assert C.main(["--baseline", f"{base[0]}", "--variant", f"{var[0]},{var[1]}"]) == 2
