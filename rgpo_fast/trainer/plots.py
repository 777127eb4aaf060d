"""PNG plots of reward, accuracy and guidance over steps, from metrics.jsonl rows."""

from __future__ import annotations

from pathlib import Path


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def moving_average(ys: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (the first points average what exists)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def with_held_out(rows: list[dict], before: dict, after: dict, last_step: int) -> list[dict]:
    """The rows plus the evaluations before RL (step 0) and after it (`last_step`) as
    eval/<set>_accuracy points, so the held-out curve runs from start to end."""
    start = {"step": 0, **{f"eval/{k}": v for k, v in before.items()}}
    end = {"step": last_step, **{f"eval/{k}": v for k, v in after.items()}}
    return [start, *rows, end]


def write_plots(rows: list[dict], out_dir: str | Path,
                held_out: tuple[dict, dict, int] | None = None) -> list[Path]:
    """reward.png, accuracy.png, guidance.png (skips what has no data). Headless backend.

    `held_out` = (eval before RL, eval after RL, last step) adds the held-out accuracies at
    both ends of the accuracy plot (periodic evaluations, `eval.every`, fill the middle)."""
    if held_out is not None:
        rows = with_held_out(rows, *held_out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = {
        "reward.png": ("reward", ["reward/mean"]),
        "accuracy.png": ("accuracy (training samples; held-out eval/*)", ["accuracy/mean"] + sorted(
            {k for r in rows for k in r if k.startswith("eval/") and k.endswith("accuracy")})),
        "guidance.png": ("count per step", ["guided/prompts", "guided/accepted"]),
    }
    written = []
    for fname, (ylabel, keys) in panels.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for key in keys:
            xs, ys = _series(rows, key)
            if not xs:
                continue
            drawn = True
            if key.startswith("eval/") or len(xs) < 30:
                ax.plot(xs, ys, marker="o", ms=3, label=key)
                continue
            # Per-step values of a small batch are noisy: faint raw line, bold trend.
            window = max(len(xs) // 10, 3)
            (line,) = ax.plot(xs, ys, alpha=0.3, lw=1)
            ax.plot(xs, moving_average(ys, window), color=line.get_color(), lw=2,
                    label=f"{key} ({window}-step mean)")
        if drawn:
            ax.set_xlabel("RL step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out_dir / fname, dpi=100)
            written.append(out_dir / fname)
        plt.close(fig)
    return written
