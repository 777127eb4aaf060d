"""Paired held-out comparison of finished runs: a variant against a baseline, seed by seed.

Every run of the trainer scores the same held-out problems (data.eval_seed) and writes each
problem's value before and after RL to summary.json (`eval_items`), so two runs of one seed
pair problem by problem. For each metric this prints, per seed, the baseline's and the
variant's held-out value before and after, the variant - baseline difference with its
paired standard error, and the difference averaged over seeds per problem (the s.e. of
that mean over problems).

  for s in 0 1 2; do for a in grpo sapo; do
    python -m rgpo_fast.train --algo $a --seed $s --output-dir runs/cmp_${a}_s$s; done; done
  python benchmarks/compare_runs.py --baseline runs/cmp_grpo_s0,runs/cmp_grpo_s1,runs/cmp_grpo_s2 \\
      --variant runs/cmp_sapo_s0,runs/cmp_sapo_s1,runs/cmp_sapo_s2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))

from rgpo_fast.trainer.metrics import mean_and_se, paired_gain  # noqa: E402

METRICS = ("easy_mean@8", "hard_mean@8", "easy_accuracy", "hard_accuracy")


def load_items(run_dir: str | Path) -> dict:
    """summary.json's per-problem values {"before": {metric: [...]}, "after": {...}}."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    if "eval_items" not in summary:
        raise SystemExit(f"error: {run_dir}/summary.json has no eval_items (per-problem values)")
    return summary["eval_items"]


def compare(baseline: list[dict], variant: list[dict], metric: str) -> dict:
    """Per seed (baseline before, baseline after, variant after, (difference, s.e.)), and
    the difference averaged over seeds per problem with its s.e. Runs pair by position."""
    seeds, per_problem = [], []
    for base, var in zip(baseline, variant, strict=True):
        b_after, v_after = base["after"][metric], var["after"][metric]
        seeds.append({"before": mean_and_se(base["before"][metric])[0],
                      "baseline": mean_and_se(b_after)[0], "variant": mean_and_se(v_after)[0],
                      "difference": paired_gain(b_after, v_after)})  # fmt: skip
        per_problem.append([v - b for b, v in zip(b_after, v_after)])
    averaged = [sum(col) / len(col) for col in zip(*per_problem)]
    return {"seeds": seeds, "over_seeds": mean_and_se(averaged)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--baseline", required=True, help="comma list of run dirs, one per seed")
    p.add_argument("--variant", required=True, help="comma list of run dirs, the same seeds")
    p.add_argument("--metrics", default=",".join(METRICS))
    args = p.parse_args(argv)
    base_dirs, var_dirs = args.baseline.split(","), args.variant.split(",")
    if len(base_dirs) != len(var_dirs):
        print(f"error: {len(base_dirs)} baseline runs but {len(var_dirs)} variant runs; "
              "give one of each per seed, in the same order", file=sys.stderr)
        return 2
    baseline = [load_items(d) for d in base_dirs]
    variant = [load_items(d) for d in var_dirs]
    for metric in args.metrics.split(","):
        r = compare(baseline, variant, metric)
        for i, s in enumerate(r["seeds"]):
            d, se = s["difference"]
            print(f"{metric:14s} run {i}: before {100 * s['before']:5.1f}  baseline "
                  f"{100 * s['baseline']:5.1f}  variant {100 * s['variant']:5.1f}  "
                  f"variant - baseline {100 * d:+5.1f} +- {100 * se:.1f}")
        d, se = r["over_seeds"]
        print(f"{metric:14s} over runs: variant - baseline {100 * d:+5.1f} +- {100 * se:.1f} "
              "(per-problem difference averaged over the runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
