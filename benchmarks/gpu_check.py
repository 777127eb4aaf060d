"""The GPU path in one run: extensions, GPU tests, kernel benchmark, a colocated RL run.

    python benchmarks/gpu_check.py            # == make gpu-check; about 6-8 minutes on one GPU
    python benchmarks/gpu_check.py --stages tests,bench

On a machine without a CUDA GPU it prints one line and exits 0 (nothing can be checked).
Nothing is downloaded: the RL stage builds the tiny Qwen2 locally, as the CPU default does.
Each stage runs in its own process under a time limit, so one failure or hang does not hide
the others. Stages:

  env         GPU name, driver, torch / triton / vLLM / flash-attn versions; the version
              check that `make install-gpu` runs (rgpo_fast/versions.py)
  extensions  rgpo_fast._C and rgpo_fast._C_cuda import; which backends serve CUDA tensors
  tests       `pytest -m gpu`: Triton (through the autotuner) and CUDA backends against the
              oracle in fp32 and bf16, FSDP2 on NCCL with one rank (bf16 compute, fp32
              master weights), the vLLM round trip with sleep/wake and a weight sync whose
              generations change after the sync
  bench       benchmarks/bench_linear_logprob.py --gpu at the README's two shapes in bf16:
              full (forward + backward) time over the three-matmul floor, peak memory over
              the naive loss and over Liger
  rl          5 RL steps of `python -m rgpo_fast.train` with the colocated vLLM engine on the
              tiny model: GPU memory in use after sleep, after waking the weights and after
              waking the KV cache, per step; step time; held-out accuracy before and after

It writes one summary, benchmarks/results/gpu_check.json (and prints it as a table):
each stage's status (ok / failed / skipped / timeout), its seconds and its figures.
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
STAGES = ("env", "extensions", "tests", "bench", "rl")
# Seconds per stage: together under 8 minutes, leaving room for vLLM's start-up.
LIMITS = {"env": 60, "extensions": 60, "tests": 180, "bench": 120, "rl": 240}
BENCH_SHAPES = ("1024,896,151936", "4096,256,32768")  # the README's CPU table shapes
BENCH_PROVIDERS = "triton,cuda,torch,naive,liger,floor"
RL_STEPS = 5


def rl_command(out_dir: str | Path, engine: str = "vllm", steps: int = RL_STEPS) -> list[str]:
    """The RL stage's trainer command (tests run it with engine=hf on CPU)."""
    return [
        sys.executable, "-m", "rgpo_fast.train", "--output-dir", str(out_dir),
        "--max-steps", str(steps), "--rollout.engine", engine,
        "--model.cache_dir", str(Path(out_dir) / "model_cache"),
        "--train.sft_steps", "100", "--train.prompts_per_step", "16", "--rollout.n", "8",
        "--rollout.gpu_memory_utilization", "0.3", "--data.n_eval", "64",
        "--eval.pass_k", "0", "--logging.progress", "false", "--logging.plots", "false",
        "--train.threads", "0",
    ]  # fmt: skip


def _run(cmd: list[str], limit: int, env: dict | None = None) -> tuple[str, str, float]:
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


def _python(code: str, limit: int) -> tuple[str, dict, float]:
    """Run a Python snippet that prints one JSON object on its last line."""
    status, out, secs = _run([sys.executable, "-c", code], limit)
    figures: dict = {}
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            figures = json.loads(line)
            break
    if status != "ok":
        figures["output"] = out[-1500:]
    return status, figures, secs


ENV_CODE = r"""
import json, torch, triton
from importlib import metadata
def v(n):
    try: return metadata.version(n)
    except metadata.PackageNotFoundError: return None
from rgpo_fast.versions import check_gpu_stack
p = torch.cuda.get_device_properties(0)
out = {"gpu": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
       "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
       "torch": torch.__version__, "triton": triton.__version__, "vllm": v("vllm"),
       "flash_attn": v("flash-attn"), "transformers": v("transformers")}
try:
    check_gpu_stack(); out["version_check"] = "ok"
except Exception as e:
    out["version_check"] = str(e)
print(json.dumps(out))
"""

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


def stage_env() -> tuple[str, dict]:
    status, figures, _ = _python(ENV_CODE, LIMITS["env"])
    if status == "ok" and figures.get("version_check") != "ok":
        status = "failed (versions)"
    return status, figures


def stage_extensions() -> tuple[str, dict]:
    status, figures, _ = _python(EXT_CODE, LIMITS["extensions"])
    if status == "ok" and "cuda" not in figures.get("cuda_backends", []):
        status = "failed (no cuda backend: rebuild with `make install-gpu`)"
    return status, figures


def stage_tests() -> tuple[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]  # fmt: skip
        status, out, _ = _run(cmd, LIMITS["tests"])
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


def stage_bench() -> tuple[str, dict]:
    import csv

    csv_path = RESULTS / "bench_linear_logprob_gpu.csv"
    before = csv_path.read_text().count("\n") if csv_path.exists() else 0
    status, outs = "ok", []
    t_end = time.perf_counter() + LIMITS["bench"]
    for shape in BENCH_SHAPES:
        left = int(t_end - time.perf_counter())
        if left < 10:
            status = "timeout"
            break
        st, out, _ = _run([sys.executable, "benchmarks/bench_linear_logprob.py", "--gpu",
                           "--dtype", "bfloat16", "--shape", shape, "--providers",
                           BENCH_PROVIDERS], left)  # fmt: skip
        outs.append(out)
        if st != "ok":
            status = st
    rows = []
    if csv_path.exists():
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))[max(before - 1, 0):]
    figures = {"rows": bench_summary(rows)}
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


def stage_rl() -> tuple[str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        status, out, secs = _run(rl_command(run_dir), LIMITS["rl"])
        figures = rl_summary(run_dir)
    figures["seconds"] = round(secs, 1)
    if status != "ok":
        figures["output"] = out[-1500:]
    return status, figures


def rl_summary(run_dir: Path) -> dict:
    """Memory after sleep / wakes and step times per step; accuracy before and after."""
    figures: dict = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        figures["steps"] = [
            {k: r[k] for k in r if k.startswith("memory/") or k in ("step", "time/step_s",
                                                                    "time/generate_s")}
            for r in rows
        ]  # fmt: skip
    summary = run_dir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        figures["eval_before"], figures["eval_after"] = s.get("eval_before"), s.get("eval")
        figures["features"] = s.get("features")
    return figures


RUNNERS = {"env": stage_env, "extensions": stage_extensions, "tests": stage_tests,
           "bench": stage_bench, "rl": stage_rl}  # fmt: skip


def format_summary(summary: dict) -> str:
    lines = [f"gpu_check {summary['date']} ({summary.get('git_sha', '?')}): "
             f"{summary['stages'].get('env', {}).get('figures', {}).get('gpu', '?')}"]
    for name, st in summary["stages"].items():
        lines.append(f"  {name:10s} {st['status']:28s} {st['seconds']:6.1f} s")
    for r in summary["stages"].get("bench", {}).get("figures", {}).get("rows", []):
        lines.append(f"    bench {r['shape']:>16s} {r['provider']:7s} {r['ms']:9.3f} ms  "
                     f"time/floor {r['time_over_floor']}  mem/naive {r['memory_over_naive']}  "
                     f"mem/liger {r['memory_over_liger']}")  # fmt: skip
    for r in summary["stages"].get("rl", {}).get("figures", {}).get("steps", []):
        mem = ", ".join(f"{k.split('/')[1]} {v} GiB" for k, v in r.items()
                        if k.startswith("memory/"))  # fmt: skip
        lines.append(f"    rl step {r['step']}: {r.get('time/step_s', 0):.2f} s; {mem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma list of {', '.join(STAGES)}")  # fmt: skip
    p.add_argument("--out", default=str(RESULTS / "gpu_check.json"), help="summary file")
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
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

    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "git_sha": git_sha(), "stages": {}}
    for name in stages:
        t0 = time.perf_counter()
        status, figures = RUNNERS[name]()
        summary["stages"][name] = {"status": status, "seconds": round(time.perf_counter() - t0, 1),
                                   "figures": figures}  # fmt: skip
        print(f"gpu_check: {name}: {status}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"summary written to {args.out}")
    return 0 if all(s["status"] == "ok" for s in summary["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
