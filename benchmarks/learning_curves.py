"""Learning benchmark, pure: curves of a run, aggregates over seeds, steps and tokens to
reach a target, the rows of the table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from learning_settings import BASELINE, Variant


@dataclass
class Curve:
    """One run: held-out evaluations at eval points and per-step training signals."""

    eval_steps: list[int]
    eval_tokens: list[float]  # generated tokens up to and including that step
    easy: list[float]
    hard: list[float]
    steps: list[int] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)  # cumulative generated tokens per step
    guided_prompts: float = 0.0
    accepted: float = 0.0
    time_s: float = 0.0
    copies: float = 0.0  # accepted guided solutions equal to the reference
    final: dict[str, float] = field(default_factory=dict)  # summary["eval"]: every metric
    # final per-problem outcomes (summary["eval_items"]["after"]), for paired comparisons
    items: dict[str, list[float]] = field(default_factory=dict)


def curve_from_rows(rows: list[dict], summary: dict, metric: str = "accuracy") -> Curve:
    """Build a Curve of held-out `metric` ("accuracy" = greedy, or "mean@k") from
    metrics.jsonl rows and summary.json.

    Eval points: step 0 (summary["eval_before"], the warm start), every row with
    `eval/<set>_<metric>`, and the final step (summary["eval"])."""
    rows = sorted(rows, key=lambda r: r["step"])
    steps, reward, tokens, cum = [], [], [], 0.0
    tok_at: dict[int, float] = {0: 0.0}
    for r in rows:
        cum += float(r.get("tokens/generated", 0.0))
        steps.append(int(r["step"]))
        reward.append(float(r.get("reward/mean", 0.0)))
        tokens.append(cum)
        tok_at[int(r["step"])] = cum
    e_key, h_key = f"easy_{metric}", f"hard_{metric}"
    ev_steps = [0]
    easy = [float(summary["eval_before"].get(e_key, math.nan))]
    hard = [float(summary["eval_before"].get(h_key, math.nan))]
    for r in rows:
        if f"eval/{h_key}" in r or f"eval/{e_key}" in r:
            ev_steps.append(int(r["step"]))
            easy.append(float(r.get(f"eval/{e_key}", math.nan)))
            hard.append(float(r.get(f"eval/{h_key}", math.nan)))
    final = int(summary.get("steps", steps[-1] if steps else 0))
    if final not in ev_steps:
        ev_steps.append(final)
        easy.append(float(summary["eval"].get(e_key, math.nan)))
        hard.append(float(summary["eval"].get(h_key, math.nan)))
    tot = summary.get("totals", {})
    return Curve(eval_steps=ev_steps, eval_tokens=[tok_at.get(s, math.nan) for s in ev_steps],
                 easy=easy, hard=hard, steps=steps, reward=reward, tokens=tokens,
                 guided_prompts=float(tot.get("guided/prompts", 0.0)),
                 accepted=float(tot.get("guided/accepted", 0.0)),
                 time_s=float(summary.get("time_s", 0.0)),
                 copies=float(tot.get("guided/copies", 0.0)),
                 final=dict(summary.get("eval", {})),
                 items=dict(summary.get("eval_items", {}).get("after", {})))


def read_curve(run_dir: Path, metric: str = "accuracy") -> Curve:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines if x.strip()]
    return curve_from_rows(rows, json.loads((run_dir / "summary.json").read_text()), metric)


def paired_difference(runs: dict[int, Curve], base: dict[int, Curve], key: str
                      ) -> tuple[float, float, int] | None:  # fmt: skip
    """Mean per-problem difference of final `key` (e.g. "hard_mean@8") between `runs` and
    the baseline's `base`, over the seeds both have, with its paired standard error.

    Every run is scored on the same held-out problems (data.eval_seed), so seed s of both
    pairs problem by problem: each problem's difference is averaged over the seeds, and the
    standard error is that of the mean over problems (sd / sqrt(n)). It holds the problem
    and sampling noise; a seed's shift common to every problem shows in the per-seed
    values reported beside it. -> (difference, s.e., problems), or None without data."""
    from rgpo_fast.trainer.metrics import paired_gain

    seeds = sorted(set(runs) & set(base))
    pairs = [(base[s].items.get(key), runs[s].items.get(key)) for s in seeds]
    pairs = [(b, r) for b, r in pairs if b and r and len(b) == len(r)]
    if not pairs:
        return None
    n = len(pairs[0][0])
    if any(len(b) != n for b, _ in pairs):
        return None
    base_avg = [sum(b[i] for b, _ in pairs) / len(pairs) for i in range(n)]
    run_avg = [sum(r[i] for _, r in pairs) / len(pairs) for i in range(n)]
    gain, se = paired_gain(base_avg, run_avg)
    return gain, se, n


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    xs = [float(x) for x in xs]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@dataclass
class Aggregate:
    """Mean and std over seeds at common eval points (and per step for the reward)."""

    n_seeds: int
    eval_steps: list[int]
    eval_tokens: list[float]
    easy: list[float]
    easy_std: list[float]
    hard: list[float]
    hard_std: list[float]
    steps: list[int]
    tokens: list[float]
    reward: list[float]
    reward_std: list[float]
    final_easy: tuple[float, float]
    final_hard: tuple[float, float]
    total_tokens: tuple[float, float]
    guided_prompts: float
    accepted: float
    time_s: float
    per_seed_final_hard: list[float]
    # every final metric of summary["eval"] (greedy, mean@k, the training set), over seeds
    final_metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    copies: float = 0.0


def aggregate(curves: list[Curve]) -> Aggregate:
    """Average runs of one variant over seeds on the eval points they all share."""
    if not curves:
        raise ValueError("aggregate needs at least one curve")
    common = sorted(set.intersection(*(set(c.eval_steps) for c in curves)))
    steps = sorted(set.intersection(*(set(c.steps) for c in curves)))

    def at(c: Curve, xs: list[int], key: str, s: int) -> float:
        return getattr(c, key)[xs.index(s)]

    ev = {k: [mean_std([at(c, c.eval_steps, k, s) for c in curves]) for s in common]
          for k in ("easy", "hard", "eval_tokens")}
    st = {k: [mean_std([at(c, c.steps, k, s) for c in curves]) for s in steps]
          for k in ("reward", "tokens")}
    last = [c.eval_steps.index(max(c.eval_steps)) for c in curves]
    return Aggregate(
        n_seeds=len(curves), eval_steps=common,
        eval_tokens=[m for m, _ in ev["eval_tokens"]],
        easy=[m for m, _ in ev["easy"]], easy_std=[s for _, s in ev["easy"]],
        hard=[m for m, _ in ev["hard"]], hard_std=[s for _, s in ev["hard"]],
        steps=steps, tokens=[m for m, _ in st["tokens"]],
        reward=[m for m, _ in st["reward"]], reward_std=[s for _, s in st["reward"]],
        final_easy=mean_std([c.easy[i] for c, i in zip(curves, last)]),
        final_hard=mean_std([c.hard[i] for c, i in zip(curves, last)]),
        total_tokens=mean_std([c.tokens[-1] if c.tokens else 0.0 for c in curves]),
        guided_prompts=mean_std([c.guided_prompts for c in curves])[0],
        accepted=mean_std([c.accepted for c in curves])[0],
        time_s=mean_std([c.time_s for c in curves])[0],
        per_seed_final_hard=[c.hard[i] for c, i in zip(curves, last)],
        final_metrics={k: mean_std([c.final.get(k, math.nan) for c in curves])
                       for k in curves[0].final},
        copies=mean_std([c.copies for c in curves])[0],
    )


def first_reach(xs: list[float], values: list[float], target: float,
                eps: float = 1e-9) -> float | None:
    """The first x whose value is >= target (xs in increasing order), or None."""
    for x, v in zip(xs, values):
        if not math.isnan(v) and v >= target - eps:
            return x
    return None


def value_at_budget(xs: list[float], values: list[float], budget: float) -> float:
    """The value at the last point with x <= budget (the curve as measured, no interpolation)."""
    best = math.nan
    for x, v in zip(xs, values):
        if x <= budget + 1e-9:
            best = v
    return best


@dataclass
class Row:
    name: str
    note: str
    ablation: bool
    agg: Aggregate
    steps_to_target: float | None
    tokens_to_target: float | None
    hard_at_base_tokens: float


def summarize(aggs: dict[str, Aggregate], variants_: list[Variant], baseline: str = BASELINE
              ) -> tuple[list[Row], float, float]:
    """Rows of the table plus (target hard accuracy = baseline's final mean, baseline's
    mean generated tokens). Steps/tokens to reach the target are read off the mean-over-seeds
    curve (first eval point at or above the target)."""
    base = aggs[baseline]
    target, base_tokens = base.final_hard[0], base.total_tokens[0]
    rows = []
    for v in variants_:
        if v.name not in aggs:
            continue
        a = aggs[v.name]
        s = first_reach(a.eval_steps, a.hard, target)
        t = None if s is None else a.eval_tokens[a.eval_steps.index(int(s))]
        rows.append(Row(v.name, v.note, v.ablation, a, s, t,
                        value_at_budget(a.eval_tokens, a.hard, base_tokens)))
    return rows, target, base_tokens
