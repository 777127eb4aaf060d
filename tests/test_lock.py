"""The committed locks agree with setup.py, the Makefile and each other (requirements/lock.py).

A lock that misses a requirement, or pins a version outside setup.py's range, would make
`make install` fail on a fresh clone or install something setup.py does not allow; these
tests catch that in CI instead of on a new user's machine.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("rgpo_lock", ROOT / "requirements" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def _requirements(extras: set[str]) -> list[Requirement]:
    """rgpo_fast's requirements that apply on this machine with `extras`."""
    reqs = []
    for line in metadata.requires("rgpo_fast") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            reqs.append(req)
    return reqs


def _makefile_pin(var: str) -> str:
    m = re.search(rf"^{var}\s*:=\s*(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile has no {var}"
    return m.group(1)


@pytest.mark.parametrize("name,extras", [("lock-cpu.txt", {"test"}),
                                         ("lock-gpu.txt", {"test", "gpu"})])
def test_lock_pins_every_requirement_inside_setup_py_range(name, extras):
    pins = lock.read_lock(ROOT / "requirements" / name)
    for req in _requirements(extras):
        key = lock.canonical(req.name)
        assert key in pins, f"{name} does not pin {req.name} (run `make lock`)"
        assert Version(pins[key]) in req.specifier, f"{name}: {key}=={pins[key]} not in {req}"


def test_locks_hold_the_torch_and_vllm_the_makefile_names():
    from rgpo_fast.versions import TESTED

    cpu = lock.read_lock(ROOT / "requirements" / "lock-cpu.txt")
    gpu = lock.read_lock(ROOT / "requirements" / "lock-gpu.txt")
    assert f"torch=={cpu['torch']}" == _makefile_pin("CPU_TORCH")
    assert f"torch=={gpu['torch']}" == _makefile_pin("GPU_TORCH") == f"torch=={TESTED['torch']}"
    assert f"vllm=={gpu['vllm']}" == _makefile_pin("GPU_VLLM") == f"vllm=={TESTED['vllm']}"
    # no local build label in a pin: torch==2.13.0 must match the CPU and the CUDA build
    assert all("+" not in v for v in {**cpu, **gpu}.values())


def test_this_environment_matches_the_lock_make_install_used():
    """What `make install` checks after installing, checked again on the environment the
    suite runs in. The install stamp names the lock; skipped only outside a venv that
    `make install` built (e.g. the GPU image's interpreter)."""
    stamp = Path(sys.prefix) / ".rgpo_fast-installed"
    if not stamp.exists() or not stamp.read_text().strip():
        pytest.skip("not a venv that `make install` built")
    used = ROOT / stamp.read_text().strip()
    assert lock.lock_problems(lock.read_lock(used), lock.installed()) == []


def test_lock_problems_names_unlocked_and_mismatched_distributions():
    pins = {"torch": "2.13.0", "numpy": "2.3.0"}
    assert lock.lock_problems(pins, {"torch": "2.13.0+cpu", "numpy": "2.3.0", "pip": "23"}) == []
    problems = lock.lock_problems(pins, {"torch": "2.14.0", "extra-pkg": "1.0"})
    assert problems == ["extra-pkg 1.0 is installed but not in the lock",
                        "torch 2.14.0 is installed, the lock says 2.13.0"]


def test_lock_lines_from_a_pip_report_are_sorted_exact_pins_without_local_labels():
    report = {"install": [{"metadata": {"name": "Torch", "version": "2.13.0+cpu"}},
                          {"metadata": {"name": "rgpo_fast", "version": "0.1.0"}},
                          {"metadata": {"name": "Jinja2", "version": "3.1.6"}}]}
    assert lock.lock_lines(report) == ["jinja2==3.1.6", "torch==2.13.0"]


def test_floor_lines_take_each_lower_bound_of_the_requested_extras():
    requires = ["torch>=2.11", "numpy<3,>=1.26", 'triton>=3.6; platform_machine == "nonexistent"',
                'trl>=1.16; extra == "test"', 'vllm>=0.33; extra == "gpu"', "ruff"]
    assert lock.floor_lines(requires, {"test"}) == ["numpy==1.26", "torch==2.11", "trl==1.16"]
