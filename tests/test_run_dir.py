"""Faults and misuse of `python -m rgpo_fast.train`: one `error:` line and exit 2 for what
the user can fix, nothing lost; a traceback and a report line for a bug.

The run-directory lock is tested with real processes; a full disk is simulated by making
the checkpoint write raise OSError(ENOSPC), the error a full disk gives.
"""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgpo_fast import train
from rgpo_fast.train import main
from rgpo_fast.trainer import checkpoint as ckpt
from rgpo_fast.trainer import run_dir
from rgpo_fast.trainer.run_dir import RunDirError, RunLock
from rgpo_fast.trainer.testing import tiny_args

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_unknown_reward_is_one_error_line(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "o"), "--data.reward", "nope"]) == 2
    line = _one_error_line(capsys)
    assert "data.reward='nope'" in line and "exact" in line and "math_verify" in line


def test_output_dir_that_cannot_be_created(capsys):
    assert main(["--output-dir", "/proc/rgpo_fast_cannot_be_here/run"]) == 2
    line = _one_error_line(capsys)
    assert "cannot create the output directory /proc/rgpo_fast_cannot_be_here/run" in line


def test_one_sample_per_prompt_is_refused(tmp_path, capsys):
    assert main(["--output-dir", str(tmp_path / "o"), "--rollout.n", "1"]) == 2
    assert "rollout.n=1" in _one_error_line(capsys)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("algo", ["rgpo", "ghpo", "luffy", "guide"])
def test_guidance_without_rationales_is_refused(tmp_path, cache, capsys, algo):
    data = _jsonl(tmp_path / "plain.jsonl",
                  [{"problem": f"{i}+1=?", "answer": str(i + 1)} for i in range(8)])
    args = tiny_args(tmp_path / "run", cache, extra=["--data", str(data), "--algo", algo])
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert f"--algo {algo} needs rationales" in line and "none of the 8" in line


def test_some_rationales_give_a_count_at_start_up(tmp_path, cache, capsys):
    rows = [{"problem": f"{i}+1=?", "answer": str(i + 1),
             "rationale": f"{i}+1={i + 1}\nAnswer: {i + 1}" if i < 3 else ""} for i in range(8)]
    data = _jsonl(tmp_path / "some.jsonl", rows)
    args = tiny_args(tmp_path / "run", cache, steps=1, sft_steps=0,
                     extra=["--data", str(data), "--data.sft", "", "--data.eval", ""])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 of 8 training problems carry a rationale" in out


def test_full_disk_at_a_checkpoint_names_the_step_and_keeps_the_last_good_one(
        tmp_path, cache, capsys, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **kw):  # the checkpoint of step 2 hits a full disk
        if "step_000002" in str(f):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ckpt.torch, "save", save)
    args = tiny_args(out, cache, steps=3, extra=["--train.save_every", "1"])
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert calls["n"] == 1
    assert "could not save the checkpoint of step 2" in line and "No space left on device" in line
    assert "step_000001 (step 1)" in line and "--resume" in line
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_000000", "step_000001"]  # no .tmp-step_* left behind
    ckpt.verify(out / "checkpoints" / "step_000001")  # the last good one is intact
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # with space again, --resume continues from step 1 and re-runs step 2 once
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert main(args + ["--resume"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


HOLDER = """
import sys, time
from rgpo_fast.trainer.run_dir import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_run_owns_its_directory_and_a_dead_one_does_not(tmp_path, cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _hold_lock(run_dir)
    try:
        cmd = [sys.executable, "-m", "rgpo_fast.train", *tiny_args(run_dir, cache, steps=1)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and f"in use by another run (pid {holder.pid}" in err[0]
        assert not (run_dir / "config.yaml").exists()  # nothing was written
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock
        holder.wait()
    lock = RunLock(run_dir).acquire()  # not stuck
    with pytest.raises(RunDirError, match="in use by another run"):
        RunLock(run_dir).acquire()  # and exclusive (a second descriptor is refused)
    lock.release()


def test_a_bug_shows_its_traceback_and_how_to_report_it(tmp_path, capsys, monkeypatch):
    def broken(cfg):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(train, "run", broken)
    assert main(["--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert err.strip().splitlines()[-1] == train.REPORT


def test_user_errors_show_a_traceback_only_with_debug(tmp_path):
    with pytest.raises(RunDirError):
        main(["--output-dir", "/proc/nope/run", "--debug"])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_a_fresh_run_never_mixes_with_an_earlier_one(tmp_path, cache, capsys):
    """A second run without --resume in a directory that holds a run is refused before
    anything is written: checkpoints, metrics and config.yaml stay byte for byte."""
    out = tmp_path / "run"
    args = tiny_args(out, cache, extra=["--logging.plots", "false"])
    assert main(args) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert str(out) in line and "--resume" in line and "checkpoints step 0, 2" in line
    assert _snapshot(out) == before


def test_resume_without_a_usable_checkpoint_is_refused_where_a_run_lies(tmp_path, cache, capsys):
    out = tmp_path / "run"
    args = tiny_args(out, cache, extra=["--logging.plots", "false"])
    assert main(args) == 0
    for _, path in ckpt.list_checkpoints(out / "checkpoints"):
        (path / "manifest.json").unlink()  # every checkpoint incomplete
    before = _snapshot(out)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "no usable checkpoint" in _one_error_line(capsys)
    assert _snapshot(out) == before


def test_the_default_directory_moves_on_instead_of_refusing(tmp_path, monkeypatch):
    """`make train` twice just works: only the built-in default runs/default moves on to the
    next free runs/default-<k>; any other directory is refused, and --resume stays put."""
    monkeypatch.chdir(tmp_path)
    ok = lambda d: True  # noqa: E731
    assert run_dir.choose("runs/default", False, ok) == Path("runs/default")
    (tmp_path / "runs" / "default").mkdir(parents=True)
    (tmp_path / "runs" / "default" / "config.yaml").write_text("x: 1\n")
    assert run_dir.choose("runs/default", False, ok) == Path("runs/default")  # nothing run yet
    (tmp_path / "runs" / "default" / "metrics.jsonl").write_text('{"step": 1}\n')
    assert run_dir.choose("runs/default", False, ok) == Path("runs/default-2")
    (tmp_path / "runs" / "default-2" / "checkpoints" / "step_000000").mkdir(parents=True)
    assert run_dir.choose("runs/default", False, ok) == Path("runs/default-3")
    assert run_dir.choose("runs/default", True, ok) == Path("runs/default")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "summary.json").write_text("{}")
    with pytest.raises(RunDirError, match="continue it with --resume"):
        run_dir.choose("mine", False, ok)


def test_resume_keeps_the_options_that_define_the_run(tmp_path, cache, capsys):
    """A resume with another algorithm, learning rate or model size is refused with the
    differing keys, and config.yaml is left as it was; a longer run is allowed and its
    change recorded in config_history.jsonl."""
    out = tmp_path / "run"
    args = tiny_args(out, cache, extra=["--logging.plots", "false"])
    assert main(args) == 0
    saved = (out / "config.yaml").read_bytes()
    for extra, key in ((["--algo", "grpo"], "algo.name"), (["--optim.lr", "0.05"], "optim.lr"),
                       (["--model.tiny_hidden", "64"], "model.tiny_hidden")):
        capsys.readouterr()
        assert main([*args, "--resume", *extra]) == 2
        line = _one_error_line(capsys)
        assert key in line and "another --output-dir" in line, line
        assert (out / "config.yaml").read_bytes() == saved
    assert not (out / "config_history.jsonl").exists()
    longer = [*tiny_args(out, cache, steps=3, extra=["--logging.plots", "false"]), "--resume"]
    assert main(longer) == 0
    history = [json.loads(x) for x in (out / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["changed"] == {"train.max_steps": {"was": 2, "now": 3}}
    assert "max_steps: 3" in (out / "config.yaml").read_text()


def test_a_start_that_fails_its_checks_writes_no_config(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(out, cache, extra=["--data.train", str(tmp_path / "nope.jsonl")])) == 2
    _one_error_line(capsys)
    assert not (out / "config.yaml").exists()
