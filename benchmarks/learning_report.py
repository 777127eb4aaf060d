"""Learning benchmark, output: the markdown table with its target checks, the hint-probe
table, the figure, the machine and wall-time lines."""

from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path

from learning_curves import Aggregate, Row
from learning_settings import BASELINE, MAIN, ROOT, Settings, Variant


def _pct(ms: tuple[float, float]) -> str:
    m, s = ms
    return "-" if math.isnan(m) else f"{100 * m:.1f} ± {100 * s:.1f}"


def _num(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def _tok(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x:.0f}"


def _diff(d: tuple[float, float, int] | None) -> str:
    return "-" if d is None else f"{100 * d[0]:+.1f} ± {100 * d[1]:.1f}"


def _greedy(value: tuple[float, float], diff: tuple[float, float, int] | None) -> str:
    return _pct(value) + ("" if diff is None else f" ({_diff(diff)})")


def markdown_table(rows: list[Row], target: float, total_steps: int, metric: str,
                   paired: dict[str, dict[str, tuple | None]]) -> str:  # fmt: skip
    """The results table: held-out `metric` in % (mean ± sample std over seeds), the
    paired difference to the baseline (± its paired standard error), greedy and training
    accuracy beside it."""
    head = (f"| algorithm | hard {metric} % | easy {metric} % | hard {metric} % per seed "
            f"| hard vs {BASELINE} (paired) | easy vs {BASELINE} (paired) "
            f"| hard greedy % (vs {BASELINE}) | easy greedy % (vs {BASELINE}) "
            f"| train {metric} % "
            f"| steps to {100 * target:.1f} % hard | generated tokens "
            "| guided prompts / accepted (copies) | wall s per run |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        a, f = r.agg, r.agg.final_metrics
        reach = ("not reached" if r.steps_to_target is None else
                 "0 (warm start)" if r.steps_to_target == 0 else f"{r.steps_to_target:.0f}")
        name = f"{r.name} ({r.note})" if r.note else r.name
        nan = (math.nan, math.nan)
        pair = paired.get(r.name, {})
        copies = f" ({100 * a.copies / a.accepted:.0f} %)" if a.accepted else ""
        lines.append(
            f"| {name} | {_pct(a.final_hard)} | {_pct(a.final_easy)} "
            f"| {', '.join(f'{100 * h:.1f}' for h in a.per_seed_final_hard)} "
            f"| {_diff(pair.get('hard'))} | {_diff(pair.get('easy'))} "
            f"| {_greedy(f.get('hard_accuracy', nan), pair.get('hard_greedy'))} "
            f"| {_greedy(f.get('easy_accuracy', nan), pair.get('easy_greedy'))} "
            f"| {_pct(f.get(f'train_{metric}', nan))} "
            f"| {reach} / {total_steps} "
            f"| {_tok(a.total_tokens[0])} ± {_tok(a.total_tokens[1])} "
            f"| {a.guided_prompts:.0f} / {a.accepted:.0f}{copies} | {a.time_s:.0f} |")
    return "\n".join(lines)


def target_checks(paired: dict[str, dict[str, tuple | None]], main: str = MAIN,
                  min_gain: float = 0.03, min_se: float = 2.0, easy_tol: float = 0.02
                  ) -> list[tuple[str, bool, str]]:  # fmt: skip
    """The targets, on the paired differences of `main` to the baseline (means over seeds)."""
    hard, easy = paired.get(main, {}).get("hard"), paired.get(main, {}).get("easy")
    if hard is None or easy is None:
        return []
    g, se, n = hard
    return [
        (f"{main} above {BASELINE} on held-out hard by >= {100 * min_gain:.0f} points and "
         f">= {min_se:.0f} paired standard errors",
         g >= min_gain - 1e-9 and g >= min_se * se,
         f"{100 * g:+.1f} ± {100 * se:.1f} points on {n} problems "
         f"({g / se if se > 0 else math.inf:.1f} s.e.)"),
        (f"{main} keeps easy within {100 * easy_tol:.0f} points of {BASELINE}",
         easy[0] >= -easy_tol - 1e-9, f"{100 * easy[0]:+.1f} ± {100 * easy[1]:.1f} points"),
    ]


def write_markdown(path: Path, rows: list[Row], target: float, s: Settings, command: str,
                   meta: dict, paired: dict, probe: list[dict] | None = None) -> str:
    """The results page: setup, table, per-seed paired differences, targets, probe."""
    metric = s.metric
    checks = target_checks(paired)
    warm = rows[0].agg if rows else None
    text = [
        "# Learning benchmark: RGPO against GRPO on `countdown`",
        "",
        f"Command: `{command}`",
        "",
        f"Setup: one SFT warm-start ({s.sft_steps} steps on `{s.sft_data}`, tiny Qwen2 "
        f"{s.tiny_layers} layers x {s.tiny_hidden}, character tokenizer) shared by every run; RL "
        f"on `{s.train_data}` ({s.n_train} training problems) for {s.steps} steps x "
        f"{s.prompts_per_step} prompts x G={s.group_size}, lr {s.lr:g}, max "
        f"{s.max_new_tokens} new tokens; held-out {metric} (average success of "
        f"{s.eval_mean_k} samples per problem at temperature 1) and greedy accuracy on the "
        f"same {s.n_eval} easy + {s.n_eval} hard problems for every run (data.eval_seed), "
        f"and on {s.eval_train} training problems, every {s.eval_every} steps; seeds "
        f"{', '.join(map(str, s.seeds))} (every seed reported). RGPO variants place the hint "
        f"in the response, one solution step per level, escalate within a step "
        f"(hint_escalation={s.hint_escalation}), train the accepted solution whole "
        f"({s.transferred_hint} hint) with sft_coef={s.sft_coef}, and transfer copies of the "
        f"reference by the rule copies={s.copies} (docs/learning.md says why).",
        "",
        f"Held-out {metric} in %, mean ± sample std over seeds. 'vs {BASELINE} (paired)': "
        "the mean per-problem difference of the final values, each problem averaged over "
        "the seeds, ± its paired standard error (problem and sampling noise; the per-seed "
        f"differences below show the seed-to-seed spread); the greedy columns carry theirs "
        f"in brackets. Steps to = first eval point of "
        f"the mean-over-seeds curve at {BASELINE}'s final hard {metric}. Tokens = generated "
        "tokens of training rollouts (guided ones included; evaluation excluded).",
        "",
    ]
    if warm is not None and warm.eval_steps and warm.eval_steps[0] == 0:
        text += [f"Warm start (step 0): easy {100 * warm.easy[0]:.1f} %, hard "
                 f"{100 * warm.hard[0]:.1f} % {metric}.", ""]
    text += [markdown_table(rows, target, s.steps, metric, paired), ""]
    per_seed = [(name, d["seeds"]) for name, d in paired.items() if d.get("seeds")]
    if per_seed:
        seeds = sorted({k for _, v in per_seed for k in v})
        text += [f"Hard {metric} difference to {BASELINE} per seed (points, ± paired s.e. "
                 "over problems):", "",
                 "| algorithm | " + " | ".join(f"seed {k}" for k in seeds) + " |",
                 "|---|" + "---|" * len(seeds)]
        text += [f"| {name} | " + " | ".join(_diff(v.get(k, {}).get("hard")) for k in seeds)
                 + " |" for name, v in per_seed]  # fmt: skip
        text += [""]
    if checks:
        text += ["Targets (measured):", ""]
        text += [f"- [{'x' if ok else ' '}] {what}: {detail}" for what, ok, detail in checks]
        text += [""]
    if probe:
        text += ["Does the warm start use partial solutions? `python -m rgpo_fast.probe` on "
                 "256 held-out hard problems, 8 samples each at temperature 1, with the first "
                 "`level` solution steps as the start of the response (RGPO's guided prompt; "
                 "level 0 = no hint; never the whole solution); copy = accepted samples equal "
                 "to the reference:", "", probe_table(probe), ""]
    text += [f"![learning curves]({path.stem}.png)", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in meta.items()), ""]
    out = "\n".join(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out)
    return out


# ----------------------------------------------------------------------------- figure


def plot(aggs: dict[str, Aggregate], variants_: list[Variant], path: Path, title: str,
         metric: str = "accuracy") -> None:  # fmt: skip
    """2 x 3 panels: held-out hard and easy `metric`, training reward; vs RL steps (top) and
    generated tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharey="col")
    colors = plt.get_cmap("tab10")

    def smooth(ys: list[float], w: int = 5) -> list[float]:
        return [sum(ys[max(0, i - w + 1): i + 1]) / len(ys[max(0, i - w + 1): i + 1])
                for i in range(len(ys))]

    for k, v in enumerate(variants_):
        if v.name not in aggs:
            continue
        a = aggs[v.name]
        style = dict(color=colors(k), ls="--" if v.ablation else "-",
                     lw=2.2 if v.name == MAIN else 1.3, label=v.name)
        for row, xs_ev, xs_st in ((0, a.eval_steps, a.steps), (1, a.eval_tokens, a.tokens)):
            for col, (ys, sd) in enumerate(((a.hard, a.hard_std), (a.easy, a.easy_std))):
                ax = axes[row][col]
                ax.plot(xs_ev, [100 * y for y in ys], marker="o", ms=2.5, **style)
                ax.fill_between(xs_ev, [100 * (y - d) for y, d in zip(ys, sd)],
                                [100 * (y + d) for y, d in zip(ys, sd)], color=colors(k),
                                alpha=0.10)
            r, rs = smooth(a.reward), smooth(a.reward_std)
            axes[row][2].plot(xs_st, r, **style)
            axes[row][2].fill_between(xs_st, [y - d for y, d in zip(r, rs)],
                                      [y + d for y, d in zip(r, rs)], color=colors(k), alpha=0.08)
    for row, xl in enumerate(("RL step", "generated tokens (training rollouts)")):
        for col, yl in enumerate((f"held-out hard {metric} %", f"held-out easy {metric} %",
                                  "train reward, unguided (5-step mean)")):
            ax = axes[row][col]
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title + " (mean over seeds, band = ± 1 std)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)


def probe_table(probe: list[dict]) -> str:
    keys = [k for k in probe[0] if k != "level"]
    lines = ["| hint level (segments shown) | " + " | ".join(f"{k} %" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for p in probe:
        lines.append(f"| {p['level']} | " + " | ".join(f"{100 * p[k]:.1f}" for k in keys) + " |")
    return "\n".join(lines)


def machine_meta() -> dict:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=ROOT).stdout.strip() or "unknown"
    cpu = "unknown"
    try:
        cpu = next(x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo")
                   if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": f"{cpu} x{os.cpu_count()}", "git": sha,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def wall_time_text(wall: dict) -> str:
    """'27.9 min (warm start made in this pass: 3.4 min; 24 runs, 0 reused)'."""
    warm = wall.get("warm_start_s")
    how = ("warm start cached" if warm is None
           else f"warm start made in this pass: {warm / 60:.1f} min")
    if "runs" in wall:
        how += f"; {wall['runs']} runs, {wall['reused']} reused"
    return f"{wall['wall_s'] / 60:.1f} min ({how})"
