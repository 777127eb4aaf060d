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
    checks = L.target_checks(rows, total_steps=20)
    assert [ok for _, ok, _ in checks] == [True, True, True]


def test_markdown_table_and_file(tmp_path):
    vs, aggs = _rows()
    rows, target, base_tokens = L.summarize(aggs, vs)
    table = L.markdown_table(rows, target, base_tokens, total_steps=20)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "rgpo (sft_coef=0.1)" in table and "not reached / 20" in table
    assert "20.0 ± 0.0" in table  # rgpo final hard, both seeds 0.2
    md = L.write_markdown(tmp_path / "x.md", rows, target, base_tokens, L.QUICK, "cmd",
                          {"git": "abc"})
    assert (tmp_path / "x.md").read_text() == md
    assert "- [x] rgpo ends >= 10 points higher" in md
    assert "sft_coef=0.1" in md


def test_plot_writes_png(tmp_path):
    vs, aggs = _rows()
    L.plot(aggs, vs, tmp_path / "c.png", "synthetic")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_every_variant_is_a_valid_trainer_config(tmp_path):
    from rgpo_fast.trainer.cli import parse_args

    s = L.FULL
    names = [v.name for v in L.variants(s)]
    assert names[:5] == ["grpo", "dapo", "ghpo", "luffy", "rgpo"] and len(names) == 8
    seen = set()
    for v in L.variants(s):
        _, cfg = parse_args(L.train_args(v, 1, s, tmp_path / "model", tmp_path / "out"))
        assert cfg.train.sft_steps == 0 and cfg.model.path == str(tmp_path / "model")
        assert cfg.train.max_steps == s.steps and cfg.optim.lr == s.lr
        assert cfg.eval.every == s.eval_every and cfg.rollout.n == s.group_size
        if v.algo == "rgpo":
            assert cfg.algo.sft_coef == s.sft_coef  # the same for every RGPO variant
            assert cfg.algo.hint_placement == s.hint_placement
        assert cfg.data.train == s.train_data and cfg.data.eval == s.eval_data
        seen.add((cfg.algo.name, cfg.algo.transfer, cfg.algo.acceptance, cfg.algo.adaptive_levels))
    assert ("rgpo", "is", "beat_all", True) in seen
    assert ("rgpo", "sft", "any_success", True) in seen
    assert ("rgpo", "sft", "beat_all", False) in seen


def test_probe_table_in_markdown(tmp_path):
    vs, aggs = _rows()
    rows, target, base_tokens = L.summarize(aggs, vs)
    probe = [{"level": 0, "sample_success": 0.05, "pass@8": 0.1},
             {"level": 1, "sample_success": 0.2, "pass@8": 0.5}]
    table = L.probe_table(probe)
    assert table.splitlines()[0] == "| hint level (segments shown) | sample_success % | pass@8 % |"
    assert "| 1 | 20.0 | 50.0 |" in table
    md = L.write_markdown(tmp_path / "y.md", rows, target, base_tokens, L.FULL, "cmd", {}, probe)
    assert table in md and "![learning curves](y.png)" in md


def test_no_speedup_claim_when_baseline_did_not_improve():
    vs = [L.Variant("grpo", "grpo"), L.Variant("rgpo", "rgpo")]
    aggs = {n: L.aggregate([L.curve_from_rows(*synthetic_run(h, [0.8] * 3))])
            for n, h in (("grpo", [0.02, 0.0, 0.02]), ("rgpo", [0.02, 0.03, 0.04]))}
    rows, target, _ = L.summarize(aggs, vs)
    assert target == pytest.approx(0.02)
    assert {r.name: r.steps_to_target for r in rows} == {"grpo": 0, "rgpo": 0}
    first = L.target_checks(rows, total_steps=10)[0]
    assert first[1] is False and "not measurable" in first[2]
    assert "0 (warm start) / 10" in L.markdown_table(rows, target, 100.0, 10)


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


def test_probe_summary_reports_the_best_partial_hint():
    probe = [{"level": 0, "sample_success": 0.018}, {"level": 1, "sample_success": 0.031},
             {"level": 2, "sample_success": 0.018}, {"level": 3, "sample_success": 0.091},
             {"level": 4, "sample_success": 0.994}]
    v = L.probe_summary(probe)
    assert "from 1.8 % (no hint) to at most 9.1 % (level 3)" in v
    assert "whole solution gives 99.4 %" in v
    assert L.probe_summary(probe[:1]) == ""  # nothing to compare


def test_trl_parity_runs_grpo_with_the_learning_settings(tmp_path):
    """benchmarks/e2e_vs_trl.py --learning: the rgpo_fast side is plain GRPO with the
    benchmark's RL settings, and the TRL side is scored on that run's held-out problems."""
    from rgpo_fast.trainer.cli import parse_args
    from rgpo_fast.trainer.data_sources import eval_sources, load_source

    path = ROOT / "benchmarks" / "e2e_vs_trl.py"
    spec = importlib.util.spec_from_file_location("e2e_vs_trl", path)
    E = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(E)
    s = L.FULL
    _, cfg = parse_args(E.rgpo_learn_argv(s, str(tmp_path / "m"), str(tmp_path / "o"), 2, 1))
    assert cfg.algo.name == "grpo" and cfg.algo.guidance == "none" and cfg.algo.beta == 0
    assert cfg.train.sft_steps == 0 and cfg.train.seed == 2 and cfg.train.max_steps == s.steps
    assert (cfg.data.train, cfg.data.eval, cfg.data.n_eval) == (s.train_data, s.eval_data, s.n_eval)
    assert (cfg.train.prompts_per_step, cfg.rollout.n) == (s.prompts_per_step, s.group_size)
    assert (cfg.optim.lr, cfg.optim.schedule) == (s.lr, s.schedule)
    assert cfg.rollout.max_new_tokens == s.max_new_tokens
    small = L.dataclasses.replace(s, n_eval=8)
    held = E._held_out(small, None, seed=2)
    for name, src in eval_sources(s.eval_data):  # the trainer's draw for --seed 2
        assert held[name] == load_source(src, n=8, seed=cfg.train.seed, heldout=True)
    assert held != E._held_out(small, None, seed=0)
