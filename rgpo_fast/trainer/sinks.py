"""Where metrics go besides metrics.jsonl: TensorBoard and Weights & Biases.

`logging.report_to` lists sinks by name. `jsonl` (metrics.jsonl) is always written: it is
the run's own record, which the plots, the summary and a resume read; naming it is allowed.
`tensorboard` writes event files to `<output_dir>/tensorboard/`; `wandb` logs a run under
`<output_dir>/wandb/`, offline unless a W&B key is configured (`WANDB_MODE` wins when set),
so it works with no network (upload later with `wandb sync <output_dir>/wandb/offline-run-*`).
Every sink gets the same rows with the same keys as metrics.jsonl (numbers only), at the
step of the row, on rank 0. Both packages are optional: a sink whose package is missing is
one `error:` line naming the package, at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from rgpo_fast.errors import UserError

SINK_NAMES = ("jsonl", "tensorboard", "wandb")


class MetricsSink(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...
    def summary(self, summary: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def parse_report_to(value: str) -> tuple[str, ...]:
    """'jsonl,tensorboard' -> ('jsonl', 'tensorboard'); unknown names raise ValueError."""
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    bad = [n for n in names if n not in SINK_NAMES]
    if bad or not names:
        raise ValueError(f"{value!r} names no metrics sink or an unknown one ({', '.join(bad)}); "
                         f"valid: a comma-separated list of {', '.join(SINK_NAMES)}")
    return names


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a row (the step excluded): what a scalar logger takes."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def held_out_numbers(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's held-out metrics before and after RL, as `eval_before/<k>`, `eval/<k>`."""
    return {f"{prefix}/{k}": v for prefix in ("eval_before", "eval")
            for k, v in numbers(summary.get(prefix, {})).items()}


class TensorBoardSink:
    def __init__(self, log_dir: Path, config: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("logging.report_to=tensorboard needs the tensorboard package: "
                            "pip install tensorboard") from None
        import yaml

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```")

    def write(self, row: dict[str, Any]) -> None:
        for k, v in numbers(row).items():
            self.writer.add_scalar(k, v, int(row["step"]))
        self.writer.flush()

    def summary(self, summary: dict[str, Any]) -> None:
        for k, v in held_out_numbers(summary).items():
            self.writer.add_scalar(f"summary/{k}", v, int(summary["steps"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_mode() -> str:
    """WANDB_MODE when set; online when an API key is in the environment; else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbSink:
    def __init__(self, out_dir: Path, config: dict[str, Any], name: str) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError("logging.report_to=wandb needs the wandb package: "
                            "pip install wandb") from None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rgpo_fast"),
                              name=name, dir=str(out_dir), config=config, mode=wandb_mode())

    def write(self, row: dict[str, Any]) -> None:
        self.run.log(numbers(row), step=int(row["step"]))

    def summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(held_out_numbers(summary))

    def close(self) -> None:
        self.run.finish()


def open_sinks(report_to: str, out_dir: Path, config: dict[str, Any]) -> list[MetricsSink]:
    """The sinks of `report_to` besides metrics.jsonl (rank 0 only)."""
    names = parse_report_to(report_to)
    sinks: list[MetricsSink] = []
    try:
        if "tensorboard" in names:
            sinks.append(TensorBoardSink(out_dir / "tensorboard", config))
        if "wandb" in names:
            sinks.append(WandbSink(out_dir, config, name=out_dir.name))
    except BaseException:
        for s in sinks:
            s.close()
        raise
    return sinks
