"""The documented examples run: examples/plain_pytorch_loop.py as a script (fresh process,
as a user would run it) with a small step count."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_plain_pytorch_loop_runs_and_updates_the_policy(tmp_path):
    cmd = [sys.executable, str(ROOT / "examples" / "plain_pytorch_loop.py"), "--steps", "3",
           "--prompts", "2", "--group", "4", "--max-new-tokens", "12",
           "--cache-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert sum(line.startswith("step ") for line in lines) == 3
    res = json.loads(lines[-1])
    assert res["steps"] == 3 and len(res["losses"]) == 3
    assert all(math.isfinite(x) for x in res["losses"])
    # The shaped reward differs within groups, so the policy gradient is non-zero and the
    # optimizer (weight decay off) moved the parameters.
    assert any(x != 0.0 for x in res["losses"])
    assert res["params_changed"] is True


def test_plain_vl_loop_runs_and_updates_the_policy(tmp_path):
    cmd = [sys.executable, str(ROOT / "examples" / "plain_vl_loop.py"), "--steps", "2",
           "--prompts", "2", "--group", "4", "--max-new-tokens", "12",
           "--cache-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["steps"] == 2 and res["finite"] and any(x != 0.0 for x in res["losses"])
    assert res["params_changed"] is True
