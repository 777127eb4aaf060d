"""End-to-end CLI runs on a tiny model: outputs, and bad input -> exit 2 + one error line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rgpo_fast.train import main
from rgpo_fast.trainer.testing import tiny_args

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_rgpo_run_writes_all_outputs(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(out, cache, steps=2, extra=["--train.save_every", "1"])) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward/mean", "accuracy/mean", "guided/prompts", "guided/accepted",
                "time/step_s", "time/generate_s", "time/update_s", "time/sync_s",
                "tokens_per_s", "memory/peak_mb"):
        assert all(key in r for r in rows), key
    assert all(r["memory/peak_mb"] > 0 and r["time/step_s"] > 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "rgpo" and summary["steps"] == 2
    assert {"easy_accuracy", "hard_accuracy", "easy_pass@1"} <= set(summary["eval"])
    assert (out / "config.yaml").is_file()
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"reward.png", "accuracy.png",
                                                               "guidance.png"}
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_000001", "step_000002"]  # keep_checkpoints=2 pruned step 0
    printed = capsys.readouterr().out
    assert "accepted guided solutions" in printed and "hard_accuracy" in printed


@pytest.mark.parametrize("algo", ["grpo", "dapo", "ghpo", "luffy", "guide", "dr_grpo", "gspo",
                                  "cispo", "sapo"])
def test_every_preset_runs_one_step(tmp_path, cache, algo):
    out = tmp_path / algo
    assert main(tiny_args(out, cache, steps=1, sft_steps=0,
                          extra=["--algo", algo, "--logging.plots", "false",
                                 "--eval.pass_k", "0", "--data.n_eval", "2"])) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == algo and summary["steps"] == 1


def test_a_top_p_top_k_run_logs_ratio_one_on_policy(tmp_path, cache):
    """A top-k / top-p run trains end to end (old log-probs and loss through the truncated
    sampler's thresholds, impl=auto picking a backend that has them), the ratio of its two
    updates stays near 1, and the token mask's share is logged (0: no correction here)."""
    out = tmp_path / "top_p"
    assert main(tiny_args(out, cache, steps=1, sft_steps=0,
                          extra=["--algo", "grpo", "--rollout.top_p", "0.8", "--rollout.top_k",
                                 "20", "--train.ppo_epochs", "2", "--logging.plots", "false",
                                 "--eval.pass_k", "0", "--data.n_eval", "2"])) == 0
    r = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert r["rollout/masked_frac"] == 0.0
    assert abs(r["ratio/mean"] - 1.0) < 0.05, r["ratio/mean"]


def test_ppo_epochs_and_mini_batches_run_and_log_their_updates(tmp_path, cache):
    out = tmp_path / "ppo"
    assert main(tiny_args(out, cache, steps=2, sft_steps=0,
                          extra=["--algo", "grpo", "--train.ppo_epochs", "2",
                                 "--train.mini_batches", "2", "--logging.plots", "false",
                                 "--eval.pass_k", "0", "--data.n_eval", "2"])) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["ppo/updates"] == 4 and r["ppo/approx_kl"] >= 0 and r["ppo/ratio_max"] > 0
        assert {"clip_frac/low", "clip_frac/high", "clip_frac/dual", "ratio/mean",
                "entropy/mean"} <= set(r)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2  # the schedule and step count are per RL step


def _bad(tmp_path, extra, capsys):
    code = main(["--output-dir", str(tmp_path / "o"), "--logging.progress", "false", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("make_args, culprit", [
    (lambda d: ["--model", str(d / "no_model")], "no_model"),
    (lambda d: ["--data", str(d / "nothing.jsonl")], "nothing.jsonl"),
    (lambda d: ["--algo", "ppo9"], "ppo9"),
    (lambda d: ["--rollout.bogus", "1"], "rollout.bogus"),
])
def test_bad_input_exits_2_with_one_error_line(tmp_path, capsys, make_args, culprit):
    code, err = _bad(tmp_path, make_args(tmp_path), capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and culprit in err[0]


def test_bad_yaml_and_empty_dataset(tmp_path, cache, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_steps: 3\n")
    code, err = _bad(tmp_path, ["--config", str(bad)], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "bad.yaml" in err[0]
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  epochs: 3\n")
    code, err = _bad(tmp_path, ["--config", str(unknown)], capsys)
    assert code == 2 and err[0].startswith("error:") and "train.epochs" in err[0]
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"problem": "", "answer": "1"}\n{"question": "x"}\n')
    code, err = _bad(tmp_path, ["--data", str(empty), "--model.cache_dir", str(cache),
                                "--model.tiny_layers", "1", "--model.tiny_hidden", "32",
                                "--model.tiny_heads", "2", "--model.tiny_kv_heads", "1"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error:") and "empty.jsonl" in err[0] and "no usable rows" in err[0]


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "rgpo_fast.train", "--model", str(tmp_path / "missing")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "missing" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
