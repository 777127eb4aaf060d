"""Shared helpers of the benchmark scripts: machine facts, CSV rows, subprocess workers."""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{cpu_name()} x{os.cpu_count()}"


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def append_csv(name: str, rows: list[dict]) -> Path:
    """Append rows to benchmarks/results/<name>; a new column rewrites the file with the
    union of columns (old rows get empty cells), so the history is never misaligned."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    old: list[dict] = []
    fields = list(rows[0])
    if path.exists():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old = list(reader)
            known = list(reader.fieldnames or [])
        fields = known + [k for r in rows for k in r if k not in known]
        fields = list(dict.fromkeys(fields))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(old + rows)
    return path


def run_worker(script: str, args: list[str], timeout: float = 3600) -> dict:
    """Run `script --worker ...` in a fresh process (its own peak memory); parse the last
    stdout line as JSON."""
    cmd = [sys.executable, script, *args]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed",
            "wall_s": time.time() - t0,
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])
