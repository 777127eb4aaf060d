"""Atomic checkpoints, fallback past broken ones, and resume after SIGKILL mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from rgpo_fast.trainer import checkpoint as ckpt
from rgpo_fast.trainer.distributed import DistInfo
from rgpo_fast.trainer.testing import tiny_args
from rgpo_fast.trainer.update import make_scheduler

ROOT = Path(__file__).resolve().parents[1]
INFO = DistInfo()


def _model_opt():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt, make_scheduler(opt, 10, 2, "cosine")


def test_round_trip_restores_everything(tmp_path):
    model, opt, sched = _model_opt()
    sched.step()
    state = {"data": {"epoch": 1, "pos": 7, "seed": 0}, "hint_levels": {"levels": {"a": 2}}}
    path = ckpt.save_checkpoint(tmp_path, 3, model, opt, sched, state, INFO)
    assert path.name == "step_000003" and not list(tmp_path.glob(".tmp-*"))
    expected_rand = torch.rand(3)  # RNG right after saving
    model2, opt2, sched2 = _model_opt()
    got = ckpt.load_latest(tmp_path, model2, opt2, sched2, INFO, log=lambda *a, **k: None)
    assert got["step"] == 3 and got["data"]["pos"] == 7 and got["hint_levels"]["levels"] == {"a": 2}
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]
    assert torch.equal(torch.rand(3), expected_rand)  # RNG restored


def test_truncated_or_corrupt_checkpoint_falls_back(tmp_path):
    model, opt, sched = _model_opt()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model, opt, sched, {"k": step}, INFO, keep=5)
    # step 3: model file truncated; step 2: a byte flipped (same size); an orphan temp dir
    m3 = tmp_path / "step_000003" / "model.pt"
    m3.write_bytes(m3.read_bytes()[:20])
    m2 = tmp_path / "step_000002" / "optim.pt"
    data = bytearray(m2.read_bytes())
    data[len(data) // 2] ^= 0xFF
    m2.write_bytes(bytes(data))
    (tmp_path / ".tmp-step_000004").mkdir()
    msgs = []
    got = ckpt.load_latest(
        tmp_path, model, opt, sched, INFO, log=lambda *a, **k: msgs.append(" ".join(map(str, a)))
    )
    assert got["k"] == 1
    assert any("step_000003" in m and "truncated" in m for m in msgs)
    assert any("step_000002" in m and "corrupt" in m for m in msgs)
    assert any("resuming from" in m and "step_000001" in m for m in msgs)


def test_keep_prunes_old_checkpoints(tmp_path):
    model, opt, sched = _model_opt()
    for step in range(4):
        ckpt.save_checkpoint(tmp_path, step, model, opt, sched, {}, INFO, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]


def _steps(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return rows


def test_sigkill_mid_run_then_resume(tmp_path):
    """Kill the CLI with SIGKILL during a step, resume: no completed step is lost and the
    run ends at the requested step with every step logged exactly once."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    total = 6
    args = tiny_args(
        out,
        cache,
        steps=total,
        sft_steps=1,
        extra=[
            "--train.save_every",
            "1",
            "--train.keep_checkpoints",
            "3",
            "--eval.pass_k",
            "0",
            "--data.n_eval",
            "2",
            "--logging.plots",
            "false",
        ],
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "rgpo_fast.train", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and len(_steps(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, (
        "run finished before it could be killed; " + proc.stderr.read().decode()
    )
    os.kill(proc.pid, signal.SIGKILL)  # mid-step 3 (or in step 2's checkpoint write)
    proc.wait()
    logged = _steps(out)
    done = [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")]
    assert logged and logged[-1] < total
    # every step whose checkpoint completed is on disk; at most the in-flight one is not
    assert max(done) >= logged[-1] - 1
    res = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert f"resuming from {out / 'checkpoints'}" in res.stdout
    resumed_from = int(res.stdout.split("(step ")[1].split(")")[0])
    assert resumed_from == max(done)  # latest complete checkpoint, nothing completed redone
    assert _steps(out) == list(range(1, total + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == total
