"""benchmarks/gpu_check.py as far as a CPU can run it: the no-GPU exit, its argument
errors, the plan (stages, caps within the 8-minute budget, what is skipped when vLLM,
flash-attn or Liger are not installed), the offline build with every index unreachable,
the RL stage's real command (with the hf engine, as on a GPU image without vLLM) and the
parsing of what each stage writes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_gpu_one_line_and_exit_0(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out",
                           str(tmp_path / "s.json")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert not (tmp_path / "s.json").exists()


def test_unknown_stage_is_an_error(capsys):
    assert gpu_check.main(["--stages", "tests,warp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "warp" in err[0]


def test_rl_stage_runs_its_real_command_with_the_hf_engine(tmp_path):
    """The RL stage as the offline GPU check runs it without vLLM (`run_rl`: the stage's
    own command, engine hf, the offline environment), here on the CPU: every flag is a
    valid trainer flag and its outputs parse into the summary."""
    status, figures = gpu_check.run_rl(tmp_path / "run", "hf", 600,
                                       gpu_check.stage_env_vars(offline=True))
    assert status == "ok", figures.get("output")
    assert figures["engine"] == "hf"
    assert [r["step"] for r in figures["steps"]] == list(range(1, gpu_check.RL_STEPS + 1))
    assert all(r["time/step_s"] > 0 and r["memory/peak_mb"] > 0 for r in figures["steps"])
    assert figures["eval_before"] and figures["eval_after"]
    assert figures["features"]["rollout_engine"] == "hf"
    assert "peak_mb" not in gpu_check.format_summary(
        {"date": "d", "stages": {"rl": {"status": "ok", "seconds": 1.0, "figures": figures}}})


def test_the_plan_fits_the_budget_and_skips_what_is_not_installed():
    assert sum(gpu_check.CAPS.values()) <= gpu_check.BUDGET_S == 480  # 8 minutes, build too
    bare = gpu_check.make_plan(list(gpu_check.STAGES), offline=True, have=lambda m: False)
    assert bare["stages"] == list(gpu_check.STAGES) and bare["offline"]
    assert bare["rl_engine"] == "hf" and "liger" not in bare["bench_providers"]
    assert bare["not_installed"] == ["flash-attn", "liger-kernel", "vllm"]
    full = gpu_check.make_plan(["rl", "env"], offline=False, have=lambda m: True)
    assert full["stages"] == ["env", "rl"] and full["rl_engine"] == "vllm"
    assert full["bench_providers"] == list(gpu_check.BENCH_PROVIDERS)
    assert full["not_installed"] == [] and set(full["caps"]) == {"env", "rl"}


def test_stages_get_their_cap_or_what_is_left_of_the_budget():
    now = [0.0]
    limits = {}

    def runner(seconds):
        def run(plan, limit, env):
            limits[run.name] = limit
            now[0] += seconds
            return "ok", {}
        return run

    plan = gpu_check.make_plan(list(gpu_check.STAGES), offline=True, have=lambda m: False)
    spent = {"build": 100, "env": 5, "extensions": 5, "tests": 330, "bench": 35, "rl": 1}
    runners = {}
    for name, secs in spent.items():
        runners[name] = runner(secs)
        runners[name].name = name
    out = gpu_check.run_stages(plan, runners, clock=lambda: now[0])
    caps = gpu_check.CAPS
    assert limits["build"] == caps["build"] and limits["tests"] == caps["tests"]
    assert limits["bench"] == 480 - 440 < caps["bench"]  # what is left of the budget
    assert out["rl"]["status"] == "skipped (time budget spent)" and "rl" not in limits  # 5 s


def test_missing_optional_packages_are_skipped_not_failed():
    from importlib import metadata

    def version(dist):
        if dist in ("vllm", "flash-attn", "liger-kernel"):
            raise metadata.PackageNotFoundError(dist)
        return "1.0"

    out = gpu_check.package_versions(version, check=lambda: 1 / 0)  # never called
    assert out["vllm"] == out["flash_attn"] == out["liger_kernel"] == "skipped: not installed"
    assert out["version_check"] == "skipped: vllm not installed" and out["torch"] == "1.0"
    with_vllm = gpu_check.package_versions(lambda d: "1.0", check=lambda: 1 / 0)
    assert with_vllm["version_check"] == "division by zero"  # the check ran and said why


def test_gpu_tests_are_collected_from_the_files_that_hold_them():
    files = gpu_check.gpu_test_files()
    assert "tests/test_cuda_backend.py" in files and "tests/test_triton_launch.py" in files
    assert "tests/test_rewards.py" not in files  # needs math-verify, absent on the GPU image


def test_offline_build_in_place_needs_no_network(tmp_path):
    """The build stage's command in a copy of the source tree with every index and proxy
    pointing nowhere: the C++ extension compiles in place (the CUDA one needs nvcc and a
    GPU build of torch, not here) and the tree imports from PYTHONPATH, no install."""
    import shutil

    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info")
    src.mkdir()
    for name in ("setup.py", "_build_native.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("csrc", "rgpo_fast", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    blocked = {"PIP_NO_INDEX": "1", "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "RGPO_FAST_SKIP_CUDA_BUILD": "1", "MAX_JOBS": "2"}  # fmt: skip
    env = {**os.environ, **blocked}
    proc = subprocess.run(gpu_check.build_command(), cwd=src, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert list((src / "rgpo_fast").glob("_C*.so")), "no extension built in place"
    check = ("import rgpo_fast, rgpo_fast._C, rgpo_fast.kernels.linear_logprob as k; "
             "from rgpo_fast.ops.backends import available_backends as a; "
             "print(rgpo_fast.__file__, k.__file__, a('cpu'))")
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**env, "PYTHONPATH": str(src)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(str(src)) and "cpp" in proc.stdout
    assert f"{src}/kernels/linear_logprob.py" in proc.stdout  # Triton sources, no install


def test_junit_and_bench_parsing(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="t" name="a"/>'
        '<testcase classname="t" name="b"><failure message="x"/></testcase>'
        '<testcase classname="t" name="c"><skipped/></testcase></testsuite></testsuites>'
    )
    assert gpu_check.junit_counts(xml) == {"passed": 1, "failed": 1, "skipped": 1,
                                           "failures": ["t::b"]}  # fmt: skip
    rows = [{"N": "8", "H": "4", "V": "16", "mode": "full", "provider": p, "ms": ms,
             "peak_mb": mb} for p, ms, mb in [("floor", "1.0", "0"), ("naive", "3.0", "100"),
                                               ("liger", "2.0", "20"), ("triton", "1.5", "10")]]
    out = {r["provider"]: r for r in gpu_check.bench_summary(rows)}
    assert out["triton"]["time_over_floor"] == 1.5
    assert out["triton"]["memory_over_naive"] == 0.1 and out["triton"]["memory_over_liger"] == 0.5
    assert out["floor"]["memory_over_naive"] is None
    text = gpu_check.format_summary({"date": "d", "stages": {
        "bench": {"status": "ok", "seconds": 1.0, "figures": {"rows": list(out.values())}}}})
    assert "time/floor 1.5" in text
