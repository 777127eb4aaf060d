"""Metrics rows of metrics.jsonl, peak memory, phase timers and the end-of-run summary."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch


class MetricsLog:
    """Append-only JSON lines, one object per step; fsync'ed so a killed run keeps them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps > `step` (they will be re-run after a resume)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            if int(row.get("step", 0)) <= step:
                keep.append(json.dumps(row))
        self.path.write_text("".join(k + "\n" for k in keep))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row, sort_keys=False) + "\n")
            f.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


class PhaseTimer:
    """Accumulates wall time per phase (generate, old_logprob, update, sync, ...)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        out, self.times = self.times, {}
        return out


def step_row(step: int, collected, batch, update: dict, phases: dict[str, float],
             step_s: float, lr: float, info, success_threshold: float) -> dict:
    """One metrics.jsonl row. Sums are global over ranks; reward and accuracy means are over
    the unguided samples (what the policy does without hints); a sample is correct when its
    reward reaches `success_threshold` (algo.success_threshold, what triggers guidance)."""
    from rgpo_fast.trainer.distributed import all_reduce_sum

    unguided = [r for row in collected.unguided_rewards for r in row]
    local = torch.tensor(
        [
            sum(unguided),
            sum(r >= success_threshold for r in unguided),
            len(unguided),
            collected.stats.get("guided/prompts", 0.0),
            collected.stats.get("guided/accepted", 0.0),
            collected.generated_tokens,
            float(batch.attention_mask.sum()),
            collected.stats.get("guided/copies", 0.0),
            collected.stats.get("guided/transferred", 0.0),
        ],
        dtype=torch.float64,
    )
    g = all_reduce_sum(local, info).tolist()
    row = {
        "step": step,
        "reward/mean": g[0] / max(g[2], 1),
        "accuracy/mean": g[1] / max(g[2], 1),
        "guided/prompts": g[3],
        "guided/accepted": g[4],
        "guided/copies": g[7],
        "guided/copy_share": g[7] / g[4] if g[4] else 0.0,
        "guided/transferred": g[8],
        "loss/total": update["loss/total"],
        "loss/pg": update.get("loss/pg", 0.0),
        "loss/sft": update.get("loss/sft", 0.0),
        "grad_norm": update["grad_norm"],
        "lr": lr,
        "batch/sequences": len(collected.samples),
        "tokens/generated": g[5],
        "tokens/trained": g[6],
        "time/step_s": step_s,
        "time/generate_s": phases.get("generate", 0.0),
        "time/old_logprob_s": phases.get("old_logprob", 0.0),
        "time/update_s": phases.get("update", 0.0),
        "time/sync_s": phases.get("sync", 0.0),
        "tokens_per_s": (g[5] + g[6]) / max(step_s, 1e-9),
    }
    # clip fractions, importance ratio, ppo/*, the token mask's share (rl_update)
    for k, v in update.items():
        if k.startswith(("clip_frac/", "ratio/", "ppo/", "entropy/", "rollout/")):
            row[k] = v
    if batch.ref_logprobs is not None:  # algo.beta > 0: the KL term to the reference
        row["kl/mean"], row["loss/kl"] = update["kl/mean"], update["loss/kl"]
    for k, v in collected.stats.items():
        row.setdefault(k, v)
    row.update(peak_memory_mb(info.device))
    return row


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak memory of this process: allocator peak (+ NVML used) on GPU, peak RSS on CPU."""
    if device.type == "cuda":
        out = {"memory/peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            out["memory/nvml_used_mb"] = pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20
        except Exception:  # nvidia-ml-py missing or NVML unavailable: allocator peak only
            pass
        return out
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"memory/peak_mb": rss / (2**20 if sys.platform == "darwin" else 2**10)}


def standard_error(p: float, n: int) -> float:
    """One standard error of an accuracy p measured on n problems: sqrt(p (1 - p) / n)."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else float("nan")


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean of per-problem values and its standard error, sd / sqrt(n)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1) / n)


def paired_gain(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """The mean per-problem difference after - before on the same problems, and its paired
    standard error, sd(differences) / sqrt(n): problems solved both times or neither add
    no noise, so it is smaller than the two accuracies' separate errors suggest."""
    if len(before) != len(after):
        raise ValueError(f"paired outcomes differ in length: {len(before)} and {len(after)}")
    return mean_and_se([a - b for a, b in zip(after, before)])


def _share(part: float, whole: float) -> str:
    return f"{int(part)} ({100 * part / whole:.0f} %)" if whole else f"{int(part)}"


def summary_table(summary: dict) -> str:
    """The human-readable end-of-run table (rank 0 prints it). Held-out values carry one
    standard error: of the per-problem values where summary.json holds them (mean@k is an
    average per problem, not a coin flip), else the binomial one of `eval_sizes`."""
    ev = summary.get("eval", {})
    before = summary.get("eval_before", {})
    sizes = summary.get("eval_sizes", {})
    items = summary.get("eval_items", {})

    def cell(key: str, value, when: str) -> str:
        if not isinstance(value, float):
            return "-"
        values = items.get(when, {}).get(key)
        if values and len(values) > 1:
            return f"{value:.3f} ± {mean_and_se(values)[1]:.3f}"
        n = next((m for name, m in sizes.items() if key.startswith(f"{name}_")), 0)
        return f"{value:.3f} ± {standard_error(value, n):.3f}" if n else f"{value:.3f}"

    rows = [("metric", "before", "after")]
    for key in sorted(ev):
        rows.append((key, cell(key, before.get(key), "before"), cell(key, ev[key], "after")))
    for key, g in sorted(summary.get("eval_gain", {}).items()):
        rows.append((f"{key} gain", "", f"{g['gain']:+.3f} ± {g['paired_se']:.3f} paired"))
    tot = summary.get("totals", {})
    rows += [
        ("guided prompts (total)", "", f"{int(tot.get('guided/prompts', 0))}"),
        ("accepted guided solutions (total)", "", f"{int(tot.get('guided/accepted', 0))}"),
        ("  of them copies of the reference", "", _share(tot.get("guided/copies", 0.0),
                                                        tot.get("guided/accepted", 0.0))),
        ("transferred (total)", "", f"{int(tot.get('guided/transferred', 0))}"),
        ("tokens/s (generation+train)", "", f"{tot.get('tokens_per_s', 0.0):.0f}"),
        (
            "RL steps / wall time",
            "",
            f"{summary.get('steps', 0)} / {summary.get('time_s', 0):.0f}s",
        ),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
