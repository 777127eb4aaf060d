"""What a hostile but realistic user types, driven through `python -m rgpo_fast.train` as
they would: the exit code, the one `error:` line, and the files on disk before and after.
Non-finite values, the reward contract, data checks, option ranges, unreadable models and
logs that are not a terminal."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgpo_fast.train import main
from rgpo_fast.trainer import checkpoint as ckpt
from rgpo_fast.trainer.testing import tiny_args

ROOT = Path(__file__).resolve().parents[1]

REWARDS = '''
import time, zlib

def spread(completion, answer):  # a different value per completion: advantages != 0
    return (zlib.crc32(completion.encode()) % 1000) / 999

def too_big(completion, answer):
    return 5.0

def negative(completion, answer):
    return -3.0

def nothing(completion, answer):
    return None

def nan(completion, answer):
    return float("nan")

def boom(completion, answer):
    raise KeyError("no such field")

def never(completion, answer):
    while True:
        time.sleep(0.01)

def breaks_on_generations(completion, answer):  # fine on the references, not on samples
    if "Answer" in completion or "->" in completion or "=" in completion:
        return 1.0
    raise ValueError("cannot parse " + completion[:10])

def signed(completion, answer):
    return -1.0 if zlib.crc32(completion.encode()) % 2 else 1.0
signed.reward_range = (-1.0, 1.0)
'''


@pytest.fixture(scope="module")
def rewards(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "my_rewards.py"
    path.write_text(REWARDS)
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _finite_checkpoints(run: Path) -> list[int]:
    steps = ckpt.list_checkpoints(run / "checkpoints")
    for _, path in steps:
        state = torch.load(path / "model.pt", weights_only=True)
        assert all(torch.isfinite(t).all() for t in state.values()), path
    return [s for s, _ in steps]


# ------------------------------------------------------------------ non-finite values


def test_nan_in_the_warm_start_stops_before_any_checkpoint(tmp_path, cache, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, sft_steps=5, extra=["--train.sft_lr", "1e30"])) == 2
    line = _error_line(capsys)
    assert "non-finite loss nan" in line and "in the SFT warm start at step" in line
    assert "train.sft_lr (now 1e+30)" in line and "--train.max_nonfinite_skips" in line
    assert _finite_checkpoints(run) == []  # nothing NaN was written...
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml"]  # nor anything else


def test_skipped_nonfinite_updates_are_counted_and_bounded(tmp_path, cache, capsys):
    args = tiny_args(tmp_path / "run", cache, sft_steps=6,
                     extra=["--train.sft_lr", "1e30", "--train.max_nonfinite_skips", "2"])
    assert main(args) == 2
    line = _error_line(capsys)
    assert "2 non-finite updates were already dropped (train.max_nonfinite_skips)" in line


def test_weights_that_diverge_in_rl_never_reach_a_checkpoint(tmp_path, cache, capsys, rewards):
    run = tmp_path / "run"
    args = tiny_args(run, cache, steps=4, sft_steps=0,
                     extra=["--data.reward", f"{rewards}:spread", "--optim.lr", "1e30",
                            "--optim.grad_clip", "0", "--train.save_every", "1",
                            "--data.sft", ""])  # fmt: skip
    assert main(args) == 2
    line = _error_line(capsys)
    assert "non-finite" in line or "diverged" in line
    steps = _finite_checkpoints(run)
    assert 0 in steps and len(steps) < 5  # the run stopped, and all it kept is finite


def test_a_nonfinite_rl_update_is_not_applied(tmp_path):
    """The guard inside rl_update: a NaN loss leaves weights and AdamW state untouched
    (skip mode, counted) or stops with the phase and step."""
    from rgpo_fast.algos.presets import get_preset
    from rgpo_fast.batch import assemble_batch
    from rgpo_fast.data.types import Sample
    from rgpo_fast.errors import NonFiniteError
    from rgpo_fast.trainer.distributed import DistInfo
    from rgpo_fast.trainer.nonfinite import NonFiniteGuard
    from rgpo_fast.trainer.rl_update import rl_update
    from rgpo_fast.trainer.testing import tiny_model_dir, tiny_policy
    from rgpo_fast.trainer.update import make_optimizer

    policy = tiny_policy(tiny_model_dir(tmp_path))
    with torch.no_grad():
        policy.lm.model.norm.weight[0] = float("nan")  # every loss is NaN now
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    algo = get_preset("grpo")
    samples = [Sample(prompt_ids=[1, 2], response_ids=[3, 4, 5], reward=float(i % 2), group=0)
               for i in range(4)]  # fmt: skip
    batch = assemble_batch(samples, algo, pad_token_id=0)
    opt = make_optimizer(policy, 1e-3, type("O", (), {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8,
                                                      "weight_decay": 0.0}))
    guard = NonFiniteGuard("RL", "Lower optim.lr", max_skips=1)
    m = rl_update(policy, opt, batch, algo.loss_config(), micro=4, info=DistInfo(),
                  grad_clip=1.0, guard=guard, step=7)
    assert m["nonfinite/skipped"] == 1 and guard.skipped == 1 and not opt.state
    after = policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k != "lm.model.norm.weight")
    assert torch.equal(before["lm.model.norm.weight"][1:], after["lm.model.norm.weight"][1:])
    with pytest.raises(NonFiniteError, match="in the RL at step 8: 1 non-finite updates"):
        rl_update(policy, opt, batch, algo.loss_config(), micro=4, info=DistInfo(),
                  grad_clip=1.0, guard=guard, step=8)


def test_a_checkpoint_of_nonfinite_weights_is_refused(tmp_path):
    from rgpo_fast.errors import NonFiniteError
    from rgpo_fast.trainer.distributed import DistInfo
    from rgpo_fast.trainer.nonfinite import check_finite_weights, nonfinite_weights
    from rgpo_fast.trainer.testing import tiny_model_dir, tiny_policy

    policy = tiny_policy(tiny_model_dir(tmp_path))
    assert nonfinite_weights(policy, DistInfo()) == []
    with torch.no_grad():
        policy.lm.model.layers[0].mlp.up_proj.weight[3, 1] = float("inf")
    name = "lm.model.layers.0.mlp.up_proj.weight"
    assert nonfinite_weights(policy, DistInfo()) == [name]
    with pytest.raises(NonFiniteError, match=f"before checkpoint 4 .*{name}"):
        check_finite_weights(policy, DistInfo(), "before checkpoint 4")


# ------------------------------------------------------------------ the reward contract


@pytest.mark.parametrize("fn,says", [
    ("too_big", "returned 5.0, outside its range [0, 1]"),
    ("negative", "returned -3.0, outside its range [0, 1]"),
    ("nothing", "returned None (NoneType), not a number"),
    ("nan", "returned nan"),
    ("boom", "raised KeyError: 'no such field'"),
])
def test_a_reward_that_breaks_the_contract_fails_at_start_up(tmp_path, cache, capsys, rewards,
                                                             fn, says):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, extra=["--data.reward", f"{rewards}:{fn}"])) == 2
    line = _error_line(capsys)
    assert f"start-up check: reward {rewards}:{fn} {says}" in line
    assert "on the reference of countdown:mixed problem" in line
    assert "SFT warm-start" not in capsys.readouterr().out  # before any training
    assert not run.exists() or not (run / "checkpoints").exists()


def test_a_reward_that_never_returns_is_cut_off(tmp_path, cache, capsys, rewards):
    args = tiny_args(tmp_path / "run", cache,
                     extra=["--data.reward", f"{rewards}:never", "--data.reward_timeout_s", "0.2"])
    assert main(args) == 2
    assert "did not return within data.reward_timeout_s=0.2s" in _error_line(capsys)


def test_a_builtin_reward_that_does_not_fit_the_data_fails_in_seconds(tmp_path, cache, capsys):
    data = _jsonl(tmp_path / "plain.jsonl", [{"problem": f"{i}+1=?", "answer": str(i + 1),
                                              "rationale": f"{i}+1={i + 1}"} for i in range(8)])
    args = tiny_args(tmp_path / "run", cache, extra=["--data", str(data), "--data.reward",
                                                     "countdown", "--data.eval", ""])
    assert main(args) == 2
    line = _error_line(capsys)
    assert "start-up check: reward countdown raised" in line and "plain.jsonl:0" in line


def test_a_reward_failing_on_generations_names_the_sample_or_is_zeroed(tmp_path, cache, capsys,
                                                                       rewards):
    spec = f"{rewards}:breaks_on_generations"
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, extra=["--data.reward", spec])) == 2
    line = _error_line(capsys)
    assert f"reward {spec} raised ValueError: cannot parse" in line and "problem countdown-" in line
    assert "--data.reward_errors zero" in line
    run2 = tmp_path / "run2"
    assert main(tiny_args(run2, cache, extra=["--data.reward", spec,
                                              "--data.reward_errors", "zero"])) == 0
    totals = json.loads((run2 / "summary.json").read_text())["totals"]
    assert totals["reward/zeroed"] > 0
    rows = [json.loads(x) for x in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["reward/zeroed"] for r in rows) > 0


def test_a_reward_may_declare_its_range(tmp_path, cache, capsys, rewards):
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, extra=["--data.reward", f"{rewards}:signed"])) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(-1.0 <= r["reward/mean"] <= 1.0 for r in rows)


def test_a_custom_reward_that_cannot_be_imported(tmp_path, cache, capsys, rewards):
    for spec, says in [(f"{tmp_path}/none.py:f", "no file"),
                       (f"{rewards}:missing", "has no function 'missing'"),
                       ("no_such_module_x:f", "cannot import no_such_module_x")]:
        assert main(tiny_args(tmp_path / "run", cache, extra=["--data.reward", spec])) == 2
        assert says in _error_line(capsys)


def test_each_eval_set_is_scored_with_its_own_reward(tmp_path, cache, capsys):
    args = tiny_args(tmp_path / "run", cache, steps=1, sft_steps=0,
                     extra=["--data.eval", "countdown:easy,arith:hard", "--data.sft", ""])
    assert main(args) == 0
    out = capsys.readouterr().out
    # countdown's reward raises on an arith answer: scoring arith:hard with the training
    # data's reward would have stopped the run at the start-up check
    assert "notice: reward" not in out  # each set's references score 1 with its own reward
    from rgpo_fast.trainer.cli import parse_args
    from rgpo_fast.trainer.data_sources import checked_reward_for

    _, cfg = parse_args(args)
    assert checked_reward_for(cfg, "arith:hard").name == "exact"
    assert checked_reward_for(cfg, "countdown:easy").name == "countdown"


# ------------------------------------------------------------------ data


def test_dropped_rows_are_counted_by_reason(tmp_path, cache, capsys):
    rows = [{"problem": f"{i}+1=?", "answer": str(i + 1), "rationale": f"{i}+1={i + 1}"}
            for i in range(6)]
    rows += [{"problem": "no answer"}, {"answer": "3"},
             {"problem": "1+" * 400 + "1", "answer": "1"}]
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    run = tmp_path / "run"
    args = tiny_args(run, cache, steps=1, sft_steps=0,
                     extra=["--data", str(data), "--data.eval", "", "--data.sft", "",
                            "--data.max_prompt_tokens", "200", "--algo", "grpo"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (f"data train: {data}: 9 rows, 6 used; dropped: 1 missing answer, 1 missing problem, "
            "1 prompt over the length limit (over data.max_prompt_tokens=200)") in out
    data_report = json.loads((run / "summary.json").read_text())["data"]
    assert data_report["train"]["dropped"] == {"missing answer": 1, "missing problem": 1,
                                               "prompt over the length limit": 1}


@pytest.mark.parametrize("row,field", [({"problem": {"text": "1+1"}, "answer": "2"}, "problem"),
                                       ({"problem": "1+1", "answer": [2]}, "answer"),
                                       ({"problem": "1+1", "answer": True}, "answer")])
def test_a_field_of_the_wrong_type_is_refused(tmp_path, cache, capsys, row, field):
    data = _jsonl(tmp_path / "typed.jsonl", [{"problem": "2+2", "answer": "4"}, row])
    args = tiny_args(tmp_path / "run", cache, extra=["--data", str(data), "--algo", "grpo",
                                                     "--data.sft", "", "--data.eval", ""])
    assert main(args) == 2
    assert f"typed.jsonl: row 1: field '{field}' must be text or a number" in _error_line(capsys)


def test_sft_data_without_rationales_is_refused(tmp_path, cache, capsys):
    data = _jsonl(tmp_path / "plain.jsonl", [{"problem": f"{i}+1=?", "answer": str(i + 1),
                                              "rationale": ""} for i in range(4)])
    run = tmp_path / "run"
    assert main(tiny_args(run, cache, extra=["--data.sft", str(data)])) == 2
    line = _error_line(capsys)
    assert "plain.jsonl has no row with a rationale" in line and "--data.sft ''" in line
    assert not (run / "checkpoints").exists()


def test_eval_sets_with_one_name_are_refused(tmp_path, cache, capsys):
    assert main(tiny_args(tmp_path / "run", cache,
                          extra=["--data.eval", "countdown:easy,arith:easy"])) == 2
    assert "would both be reported as 'easy'" in _error_line(capsys)


# ------------------------------------------------------------------ options and models


@pytest.mark.parametrize("option,value,says", [
    ("--optim.beta1", "1.5", "optim.beta1=1.5 must be in [0, 1)"),
    ("--optim.beta2", "-0.1", "optim.beta2=-0.1 must be in [0, 1)"),
    ("--optim.eps", "0", "optim.eps=0.0 must be positive"),
    ("--optim.eps", "-1e-8", "optim.eps=-1e-08 must be positive"),  # not "expected one arg"
    ("--train.sft_lr", "-0.1", "train.sft_lr=-0.1 must be positive"),
    ("--eval.max_new_tokens", "-5", "eval.max_new_tokens=-5 must be positive"),
    ("--data.reward_timeout_s", "0", "data.reward_timeout_s=0.0 must be positive"),
    ("--data.reward_errors", "ignore", "data.reward_errors='ignore' is invalid"),
    ("--train.max_nonfinite_skips", "-1", "train.max_nonfinite_skips=-1 must be >= 0"),
])
def test_option_ranges_are_checked_before_anything_loads(tmp_path, capsys, option, value, says):
    cache = tmp_path / "cache"  # nothing is built: the check comes first
    assert main(tiny_args(tmp_path / "run", cache, extra=[option, value])) == 2
    assert says in _error_line(capsys)
    assert not cache.exists() and not (tmp_path / "run").exists()


def test_a_truncated_model_file_is_one_error_line_naming_it(tmp_path, cache, capsys):
    from rgpo_fast.trainer.testing import tiny_model_dir

    broken = tmp_path / "cache"
    model = tiny_model_dir(broken)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(tiny_args(tmp_path / "run", broken)) == 2
    line = _error_line(capsys)
    assert f"cannot load model {model} (weights: model.safetensors)" in line
    assert "damaged or truncated" in line and f"delete {model} and it is rebuilt" in line
    assert main(tiny_args(tmp_path / "run2", broken, extra=["--model", str(model)])) == 2
    assert "damaged or truncated" in _error_line(capsys)


def test_a_cache_where_the_model_cannot_be_built_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"  # a cache below a file: unwritable even for root
    blocker.write_text("")
    assert main(tiny_args(tmp_path / "run", blocker / "cache")) == 2
    line = _error_line(capsys)
    assert f"cannot build the tiny model in {blocker / 'cache'}" in line
    assert "--model.cache_dir" in line


# ------------------------------------------------------------------ logs


def test_logs_that_are_not_a_terminal_get_plain_lines(tmp_path, cache):
    """`make train > log 2>&1`: no carriage-return frames, progress as plain lines, and an
    error on a line of its own."""
    args = tiny_args(tmp_path / "run", cache, steps=2, sft_steps=3)
    args[args.index("--logging.progress") + 1] = "true"
    proc = subprocess.run([sys.executable, "-m", "rgpo_fast.train", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert "\r" not in log
    assert "SFT warm-start: 3/3, loss=" in proc.stdout and "RL: 2/2, reward=" in proc.stdout
    # an error while progress is shown
    proc = subprocess.run([sys.executable, "-m", "rgpo_fast.train", *args, "--train.sft_lr",
                           "1e30", "--output-dir", str(tmp_path / "run2")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("error: non-finite loss")


def test_a_full_disk_at_final_says_training_finished(tmp_path, cache, capsys, monkeypatch):
    import errno
    import os

    from rgpo_fast.trainer import hf_export

    real = hf_export.write_hf_dir

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    run = tmp_path / "run"
    args = tiny_args(run, cache, extra=["--logging.plots", "false"])
    monkeypatch.setattr(hf_export, "write_hf_dir", full)
    assert main(args) == 2
    line = _error_line(capsys)
    assert f"cannot write the model to {run / 'final'}: No space left on device" in line
    assert "Training itself finished: checkpoints/step_000002 is complete and intact" in line
    assert "--resume to write final/" in line
    monkeypatch.setattr(hf_export, "write_hf_dir", real)
    assert main(args + ["--resume"]) == 0
    assert (run / "final" / "model.safetensors").is_file() and (run / "summary.json").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert math.isfinite(summary["time_s"])
    # the gains use the per-problem outcomes before RL, kept in the checkpoint
    assert set(summary["eval_gain"]) == {f"{split}_{metric}" for split in ("easy", "hard")
                                         for metric in ("accuracy", "mean@8")}
