"""The Triton kernels compile for a GPU target on this CPU machine (kernels/compile_check.py).

The interpreter tests run the kernels' numerics, but the interpreter accepts code the GPU
compiler rejects (it once hid a NameError in the policy-loss kernel). Here every autotune
configuration of the log-prob kernels (bf16, all flags on) and the combine and policy-loss
kernels are lowered to PTX and assembled by ptxas for sm_90, in a process without
TRITON_INTERPRET; each kernel must have a configuration within sm_90's shared memory.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # triton 3.9's default, set to silence its warning
    proc = subprocess.run(
        [sys.executable, "-m", "rgpo_fast.kernels.compile_check", "--arch", "90", "--quick",
         "--json"], capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["failed"] == [], "\n".join(report["failed"])
    assert report["compiled"] >= 15
    assert report["fits"] and all(report["fits"].values()), report["fits"]
