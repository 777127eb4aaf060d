"""The GPU path in one run: build, extensions, GPU tests, kernel benchmark, an RL run.

    python benchmarks/gpu_check.py            # == make gpu-check (after make install-gpu)
    python3 benchmarks/gpu_check.py --offline # == make gpu-check-offline: no network, no venv
    python benchmarks/gpu_check.py --stages tests,bench

On a machine without a CUDA GPU it prints one line and exits 0 (nothing can be checked).
Nothing is downloaded: the RL stage builds the tiny Qwen2 locally, as the CPU default does.
Each stage runs in its own process under its own time limit (CAPS), and all of them within
BUDGET_S, so one failure or hang does not hide the others. Stages:

  build       --offline only: the C++/CUDA extensions compiled in place by the interpreter
              that already holds torch (`setup.py build_ext --inplace`, no pip, no venv, no
              download), for the local GPU's architecture only; every later stage imports
              the source tree (PYTHONPATH)
  env         GPU name, driver, torch / triton / vLLM / flash-attn / Liger versions; the
              version check of `make install-gpu` (rgpo_fast/versions.py) when vLLM is
              installed. A missing optional package is "skipped: not installed"
  extensions  rgpo_fast._C and rgpo_fast._C_cuda import; the cuda and triton backends serve
              CUDA tensors
  tests       `pytest -m gpu` on the test files that hold GPU tests: Triton (through the
              autotuner) and CUDA backends against the oracle in fp32 and bf16, the CUDA
              bf16 pack, FSDP2 on NCCL with one rank (bf16 compute, fp32 master weights),
              the vLLM round trip (skipped without vLLM)
  bench       benchmarks/bench_linear_logprob_gpu.py at the README's two shapes in bf16:
              full (forward + backward) time over the three-matmul floor, peak memory over
              the naive loss and over Liger (when installed)
  rl          5 RL steps of `python -m rgpo_fast.train` on the tiny model with the colocated
              vLLM engine, or the hf engine on the GPU when vLLM is absent (bf16 compute,
              fp32 master weights): step time, peak memory, GPU memory after sleep and wakes
              (vLLM), held-out accuracy before and after

It writes one summary, benchmarks/results/gpu_check.json (and prints it as a table):
each stage's status (ok / failed / skipped / timeout), its seconds and its figures, and the
plan it ran (caps, engine, what was not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("build", "env", "extensions", "tests", "bench", "rl")
# Time limit per stage (s), sized from an estimate for one H100/H200 with 16 cores; the
# whole run, build included, stays within BUDGET_S (8 minutes), and a stage gets at most
# what is left of it.
#   build       one arch (sm_90), 3 .cu + 3 .cpp files, ninja on 16 cores: ~60-90 s
#   env, extensions  an interpreter importing torch and triton: ~10 s each
#   tests       ~40 Triton autotune compiles (bf16: 8 configs x fwd/bwd x 2 flag sets; fp32
#               4 x 2 x 2) at ~1-2 s each, ~20 CUDA-backend oracle tests, FSDP2/NCCL with
#               one rank, vLLM's start-up when installed: ~100-130 s
#   bench       2 shapes x 6 providers x 3 modes, do_bench: ~40 s
#   rl          tiny model: start-up, 100 SFT steps, 5 RL steps, 2 x 64 held-out problems
#               before and after: ~40 s with the hf engine, ~80 s with vLLM's start-up
CAPS = {"build": 120, "env": 30, "extensions": 30, "tests": 150, "bench": 60, "rl": 90}
BUDGET_S = 480
BENCH_SHAPES = ("1024,896,151936", "4096,256,32768")  # the README's CPU table shapes
BENCH_PROVIDERS = ("triton", "cuda", "torch", "triton-topp", "naive", "liger", "floor")
OPTIONAL = {"vllm": "vllm", "flash_attn": "flash-attn", "liger_kernel": "liger-kernel"}
RL_STEPS = 5


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def make_plan(stages: list[str], offline: bool, have=installed) -> dict:
    """What this run will do: the stages in order with their caps, the RL engine, the bench
    providers, and the optional packages that are not installed (`have(module)` tells;
    tests pass their own)."""
    missing = sorted(dist for mod, dist in OPTIONAL.items() if not have(mod))
    return {
        "offline": offline,
        "stages": [s for s in STAGES if s in stages],
        "caps": {s: CAPS[s] for s in STAGES if s in stages},
        "budget_s": BUDGET_S,
        "rl_engine": "vllm" if "vllm" not in missing else "hf",
        "bench_providers": [p for p in BENCH_PROVIDERS
                            if not (p == "liger" and "liger-kernel" in missing)],
        "not_installed": missing,
    }  # fmt: skip


def stage_env_vars(offline: bool) -> dict[str, str]:
    """Environment of every stage's process. Offline: the source tree on the path (nothing
    is installed) and every download switched off, so a stage that tried would fail fast."""
    if not offline:
        return {}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # fmt: skip


def build_command() -> list[str]:
    """The offline install: the extensions compiled in place by this interpreter."""
    return [sys.executable, "setup.py", "build_ext", "--inplace"]


def local_arch() -> str:
    """The local GPU's TORCH_CUDA_ARCH_LIST entry ("9.0" on an H100/H200)."""
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def rl_command(out_dir: str | Path, engine: str = "vllm", steps: int = RL_STEPS) -> list[str]:
    """The RL stage's trainer command (its tests run it with engine=hf on CPU)."""
    return [
        sys.executable, "-m", "rgpo_fast.train", "--output-dir", str(out_dir),
        "--max-steps", str(steps), "--rollout.engine", engine,
        "--model.cache_dir", str(Path(out_dir) / "model_cache"),
        "--train.sft_steps", "100", "--train.prompts_per_step", "16", "--rollout.n", "8",
        "--rollout.gpu_memory_utilization", "0.3", "--data.n_eval", "64",
        "--eval.pass_k", "0", "--logging.progress", "false", "--logging.plots", "false",
        "--train.threads", "0",
    ]  # fmt: skip


def _run(cmd: list[str], limit: float, env: dict | None = None) -> tuple[str, str, float]:
    """(status, output tail, seconds) of one subprocess under a time limit."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT,
                              env={**os.environ, **(env or {})})  # fmt: skip
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")  # fmt: skip
        return "timeout", out[-3000:], time.perf_counter() - t0
    status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    return status, (proc.stdout + proc.stderr)[-3000:], time.perf_counter() - t0


def _python(code: str, limit: float, env: dict) -> tuple[str, dict, float]:
    """Run a Python snippet that prints one JSON object on its last line."""
    status, out, secs = _run([sys.executable, "-c", code], limit, env)
    figures: dict = {}
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            figures = json.loads(line)
            break
    if status != "ok":
        figures["output"] = out[-1500:]
    return status, figures, secs


ENV_CODE = r"""
import json, sys, torch
sys.path.insert(0, "benchmarks")
from gpu_check import package_versions
p = torch.cuda.get_device_properties(0)
out = {"gpu": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
       "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda, **package_versions()}
print(json.dumps(out))
"""

NOT_INSTALLED = "skipped: not installed"


def package_versions(version=None, check=None) -> dict[str, str]:
    """Versions of the GPU stack; an absent optional package is NOT_INSTALLED, and the
    torch/vLLM pairing check (rgpo_fast/versions.py) runs only when vLLM is there.
    `version(dist)` and `check()` default to the installed ones (tests pass their own)."""
    from importlib import metadata

    def installed_version(dist: str) -> str:
        try:
            return (version or metadata.version)(dist)
        except metadata.PackageNotFoundError:
            return NOT_INSTALLED

    out = {name: installed_version(dist) for name, dist in (
        ("torch", "torch"), ("triton", "triton"), ("transformers", "transformers"),
        ("vllm", "vllm"), ("flash_attn", "flash-attn"), ("liger_kernel", "liger-kernel"))}
    if out["vllm"] == NOT_INSTALLED:
        out["version_check"] = "skipped: vllm not installed"
        return out
    if check is None:
        from rgpo_fast.versions import check_gpu_stack as check
    try:
        check()
        out["version_check"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported, not raised: the other stages still run
        out["version_check"] = str(e)
    return out


EXT_CODE = r"""
import json, importlib, torch
out = {}
for mod in ("rgpo_fast._C", "rgpo_fast._C_cuda"):
    try:
        importlib.import_module(mod); out[mod] = "imported"
    except Exception as e:
        out[mod] = f"{type(e).__name__}: {e}"[:200]
from rgpo_fast.ops.backends import available_backends
out["cuda_backends"] = available_backends("cuda")
print(json.dumps(out))
"""


def stage_build(plan: dict, limit: float, env: dict) -> tuple[str, dict]:
    arch = local_arch()
    build_env = {**env, "TORCH_CUDA_ARCH_LIST": arch, "RGPO_FAST_CUDA_ARCH_LIST": arch,
                 "MAX_JOBS": str(os.cpu_count() or 4)}  # fmt: skip
    status, out, secs = _run(build_command(), limit, build_env)
    built = sorted(p.name for p in (ROOT / "rgpo_fast").glob("_C*.so"))
    figures = {"arch": arch, "built": built, "seconds": round(secs, 1)}
    if status != "ok":
        figures["output"] = out[-1500:]
    return status, figures


def stage_env(plan: dict, limit: float, env: dict) -> tuple[str, dict]:
    status, figures, _ = _python(ENV_CODE, limit, env)
    check = figures.get("version_check", "")
    if status == "ok" and not (check == "ok" or check.startswith("skipped")):
        status = "failed (versions)"
    return status, figures


def stage_extensions(plan: dict, limit: float, env: dict) -> tuple[str, dict]:
    status, figures, _ = _python(EXT_CODE, limit, env)
    backends = figures.get("cuda_backends", [])
    if status == "ok" and "cuda" not in backends:
        fix = "the build stage" if plan["offline"] else "`make install-gpu`"
        status = f"failed (no cuda backend: rebuild with {fix})"
    elif status == "ok" and "triton" not in backends:
        status = "failed (no triton backend: rgpo_fast.kernels does not import)"
    return status, figures


def gpu_test_files(tests_dir: Path = ROOT / "tests") -> list[str]:
    """The test files that hold GPU tests: only these are collected, so a module that needs
    a package the GPU image lacks (math-verify, datasets, trl) cannot stop the stage."""
    return sorted(str(p.relative_to(ROOT)) for p in tests_dir.glob("test_*.py")
                  if "mark.gpu" in p.read_text())  # fmt: skip


def stage_tests(plan: dict, limit: float, env: dict) -> tuple[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}", *gpu_test_files()]  # fmt: skip
        status, out, _ = _run(cmd, limit, env)
        figures = junit_counts(xml) if xml.exists() else {}
    if status != "ok":
        figures["output"] = out[-1500:]
    return status, figures


def junit_counts(xml_path: Path) -> dict:
    """passed / failed / skipped counts and the failed test names of a JUnit XML report."""
    import xml.etree.ElementTree as ET

    cases = ET.parse(xml_path).getroot().iter("testcase")
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in cases:
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
            counts["failures"].append(f"{case.get('classname')}::{case.get('name')}")
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def stage_bench(plan: dict, limit: float, env: dict) -> tuple[str, dict]:
    import csv

    csv_path = RESULTS / "bench_linear_logprob_gpu.csv"
    before = csv_path.read_text().count("\n") if csv_path.exists() else 0
    status, outs = "ok", []
    t_end = time.perf_counter() + limit
    for shape in BENCH_SHAPES:
        left = t_end - time.perf_counter()
        if left < 10:
            status = "timeout"
            break
        st, out, _ = _run([sys.executable, "benchmarks/bench_linear_logprob_gpu.py", "--gpu",
                           "--dtype", "bfloat16", "--shape", shape, "--providers",
                           ",".join(plan["bench_providers"])], left, env)  # fmt: skip
        outs.append(out)
        if st != "ok":
            status = st
    rows = []
    if csv_path.exists():
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))[max(before - 1, 0):]
    figures = {"rows": bench_summary(rows)}
    if "liger" not in plan["bench_providers"]:
        figures["liger"] = "skipped: not installed"
    if status != "ok":
        figures["output"] = "\n".join(outs)[-1500:]
    return status, figures


def bench_summary(rows: list[dict]) -> list[dict]:
    """Per shape and provider (full mode): ms, time / floor, peak memory / naive, / Liger."""
    out = []
    full = [r for r in rows if r.get("mode") == "full"]
    for shape in dict.fromkeys(f"{r['N']},{r['H']},{r['V']}" for r in full):
        here = {r["provider"]: r for r in full if f"{r['N']},{r['H']},{r['V']}" == shape}
        floor = float(here["floor"]["ms"]) if "floor" in here else None
        naive = float(here["naive"]["peak_mb"]) if "naive" in here else None
        liger = float(here["liger"]["peak_mb"]) if "liger" in here else None
        for prov, r in here.items():
            ms, mb = float(r["ms"]), float(r["peak_mb"])
            out.append({
                "shape": shape, "provider": prov, "ms": ms, "peak_mib": mb,
                "time_over_floor": round(ms / floor, 3) if floor else None,
                "memory_over_naive": round(mb / naive, 3) if naive and prov != "floor" else None,
                "memory_over_liger": round(mb / liger, 3) if liger and prov != "floor" else None,
            })  # fmt: skip
    return out


def run_rl(run_dir: Path, engine: str, limit: float, env: dict) -> tuple[str, dict]:
    """The RL stage itself: `rl_command` under `limit`, its outputs summarised."""
    status, out, secs = _run(rl_command(run_dir, engine), limit, env)
    figures = {"engine": engine, **rl_summary(run_dir), "seconds": round(secs, 1)}
    if status != "ok":
        figures["output"] = out[-1500:]
    return status, figures


def stage_rl(plan: dict, limit: float, env: dict) -> tuple[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        return run_rl(Path(tmp) / "run", plan["rl_engine"], limit, env)


STEP_KEYS = ("step", "time/step_s", "time/generate_s", "time/update_s")


def rl_summary(run_dir: Path) -> dict:
    """Per step: times and memory (peak, and after sleep / wakes with vLLM); held-out
    accuracy before and after; the features the run reported."""
    figures: dict = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        figures["steps"] = [{k: r[k] for k in r if k.startswith("memory/") or k in STEP_KEYS}
                            for r in rows]  # fmt: skip
    summary = run_dir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        figures["eval_before"], figures["eval_after"] = s.get("eval_before"), s.get("eval")
        figures["features"] = s.get("features")
    return figures


RUNNERS = {"build": stage_build, "env": stage_env, "extensions": stage_extensions,
           "tests": stage_tests, "bench": stage_bench, "rl": stage_rl}  # fmt: skip


def _memory(key: str, value) -> str:
    name = key.split("/", 1)[1]
    if name.endswith("_gb"):
        return f"{name.removesuffix('_gb')} {value} GiB"
    if name.endswith("_mb"):
        return f"{name.removesuffix('_mb')} {value:.0f} MiB"
    return f"{name} {value}"


def format_summary(summary: dict) -> str:
    lines = [f"gpu_check {summary['date']} ({summary.get('git_sha', '?')}): "
             f"{summary['stages'].get('env', {}).get('figures', {}).get('gpu', '?')}"]
    plan = summary.get("plan")
    if plan:
        lines.append(f"  plan: {'offline, ' if plan['offline'] else ''}rl engine "
                     f"{plan['rl_engine']}, not installed: "
                     f"{', '.join(plan['not_installed']) or 'none'}")  # fmt: skip
    for name, st in summary["stages"].items():
        cap = f"/ {plan['caps'][name]:3d} s" if plan and name in plan["caps"] else ""
        lines.append(f"  {name:10s} {st['status']:40s} {st['seconds']:6.1f} s {cap}")
    for r in summary["stages"].get("bench", {}).get("figures", {}).get("rows", []):
        lines.append(f"    bench {r['shape']:>16s} {r['provider']:7s} {r['ms']:9.3f} ms  "
                     f"time/floor {r['time_over_floor']}  mem/naive {r['memory_over_naive']}  "
                     f"mem/liger {r['memory_over_liger']}")  # fmt: skip
    for r in summary["stages"].get("rl", {}).get("figures", {}).get("steps", []):
        mem = ", ".join(_memory(k, v) for k, v in r.items() if k.startswith("memory/"))
        lines.append(f"    rl step {r['step']}: {r.get('time/step_s', 0):.2f} s; {mem}")
    return "\n".join(lines)


def run_stages(plan: dict, runners: dict | None = None, clock=time.perf_counter) -> dict:
    """Every stage of `plan` under min(its cap, what is left of the budget); a stage with
    less than 10 s left is skipped. -> {name: {status, seconds, figures}}."""
    runners = runners or RUNNERS
    env = stage_env_vars(plan["offline"])
    out, t_start = {}, clock()
    for name in plan["stages"]:
        left = plan["budget_s"] - (clock() - t_start)
        t0 = clock()
        if left < 10:
            status, figures = "skipped (time budget spent)", {}
        else:
            status, figures = runners[name](plan, min(plan["caps"][name], left), env)
        out[name] = {"status": status, "seconds": round(clock() - t0, 1), "figures": figures}
        print(f"gpu_check: {name}: {status}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stages", default=None,
                   help=f"comma list of {', '.join(STAGES)} (default: all; build only with "
                        "--offline)")  # fmt: skip
    p.add_argument("--offline", action="store_true",
                   help="no network, no venv: build in place with this interpreter first")
    p.add_argument("--out", default=str(RESULTS / "gpu_check.json"), help="summary file")
    args = p.parse_args(argv)
    default = [s for s in STAGES if args.offline or s != "build"]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else default
    bad = [s for s in stages if s not in STAGES]
    if bad:
        print(f"error: unknown stage {bad[0]!r}; valid: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "nothing was checked")  # fmt: skip
        return 0
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import git_sha

    plan = make_plan(stages, args.offline)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "git_sha": git_sha(), "plan": plan,
               "stages": run_stages(plan)}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"summary written to {args.out}")
    return 0 if all(s["status"] == "ok" for s in summary["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
