"""Learning benchmark: what is compared (variants) and the settings every variant shares."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "bench_learning"
DRIVER = ROOT / "benchmarks" / "learning.py"  # workers run as `python DRIVER --...-worker`
BASELINE = "grpo"
MAIN = "rgpo"


@dataclass(frozen=True)
class Variant:
    """One row of the table: a trainer preset plus field overrides."""

    name: str
    algo: str
    overrides: tuple[tuple[str, str], ...] = ()
    ablation: bool = False
    note: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything that defines a benchmark (the same for every variant)."""

    # warm-start (done once)
    tiny_layers: int = 2
    tiny_hidden: int = 128
    tiny_intermediate: int = 256
    sft_data: str = "arith:easy"
    sft_steps: int = 2000
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    # share of SFT rows that are hard problems shown WITH their whole worked solution in the
    # prompt (the hint template RGPO uses) and that solution as the target: it teaches the
    # model to read a hint, as an instruction-tuned LLM can, without training it on any hard
    # problem lacking its solution (see docs/learning.md for why it is needed at this scale)
    sft_copy_share: float = 0.25
    # rows per forward/backward of the warm start: rows are grouped by length, so small
    # micro-batches spare the short rows the padding to the ~3x longer copy rows; 2 threads
    # because the warm start runs alone, before the training runs
    sft_micro_batch: int = 8
    warm_threads: int = 2
    warm_seed: int = 0
    # RL (the same for every algorithm)
    train_data: str = "arith:mixed"
    n_train: int = 128  # small enough that a prompt comes back (hint levels adapt per prompt)
    steps: int = 80
    prompts_per_step: int = 16
    group_size: int = 8
    max_new_tokens: int = 48
    lr: float = 1e-4
    eval_every: int = 10
    n_eval: int = 128
    eval_pass_k: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    # RGPO's NLL weight on transferred samples, the same for every RGPO variant (the paper's
    # 1e-3 is for a 3B model; see docs/learning.md for why this scale needs another value)
    sft_coef: float = 1.0

    def warm_key(self) -> str:
        keys = ("tiny_layers", "tiny_hidden", "tiny_intermediate", "sft_data", "sft_steps",
                "sft_batch_size", "sft_lr", "sft_copy_share", "sft_micro_batch", "warm_seed",
                "max_new_tokens")
        blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


FULL = Settings()
QUICK = dataclasses.replace(FULL, sft_steps=600, steps=30, eval_every=5, n_eval=64, seeds=(0, 1))


def variants(s: Settings) -> list[Variant]:
    coef = ("algo.sft_coef", repr(s.sft_coef))
    return [
        Variant("grpo", "grpo"),
        Variant("dapo", "dapo"),
        Variant("ghpo", "ghpo"),
        Variant("luffy", "luffy"),
        Variant("rgpo", "rgpo", (coef,), note=f"sft_coef={s.sft_coef}"),
        Variant("rgpo: fixed full hint", "rgpo", (coef, ("algo.adaptive_levels", "false")),
                ablation=True, note="no level adaptation"),
        Variant("rgpo: transfer=is", "rgpo", (coef, ("algo.transfer", "is")), ablation=True,
                note="Guide-style IS transfer"),
        Variant("rgpo: accept any success", "rgpo", (coef, ("algo.acceptance", "any_success")),
                ablation=True, note="acceptance=any_success"),
    ]


def sft_coef_variants(s: Settings, coefs: list[str]) -> list[Variant]:
    """GRPO, RGPO as in the main table (reused when already run) and RGPO at each other
    `sft_coef`: the weight of transferred samples, the knob between hard and easy accuracy."""
    every = {v.name: v for v in variants(s)}
    out = [every[BASELINE], every[MAIN]]
    for c in coefs:
        if float(c) != s.sft_coef:
            out.append(Variant(f"rgpo sft_coef={c}", "rgpo", (("algo.sft_coef", c),)))
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")
