"""The built-in tasks by name: `<task>:<split>` data specs and each task's verifier.

    arith:easy      multi-step arithmetic (rgpo_fast/data/arith.py), reward `exact`
    countdown:hard  reach a target from 4 numbers (rgpo_fast/data/countdown.py),
                    reward `countdown`
    shapes:hard     countdown with one number given by the colour of an image's shapes
                    (rgpo_fast/data/shapes.py), reward `shapes`; needs a
                    vision-language model

A split is a task's named set of levels ("easy", "hard", "mixed") or one level's number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rgpo_fast.data import arith, countdown, shapes
from rgpo_fast.data.types import Example


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[..., list[Example]]  # make(seed, n, split, heldout=...) -> examples
    splits: tuple[str, ...]
    levels: tuple[str, ...]
    reward: str  # name in rgpo_fast.rewards.REWARDS


TASKS: dict[str, Task] = {
    "arith": Task("arith", arith.make_arith, tuple(arith.SPLITS),
                  tuple(map(str, arith.LEVELS)), "exact"),
    "countdown": Task("countdown", countdown.make_countdown, tuple(countdown.SPLITS),
                      tuple(countdown.LEVELS), "countdown"),
    "shapes": Task("shapes", shapes.make_shapes, tuple(shapes.SPLITS), shapes.LEVELS,
                   "shapes"),
}  # fmt: skip


def task_of(spec: str) -> Task | None:
    """The built-in task a data spec names ('countdown:hard' -> countdown), else None."""
    name = spec.strip().split(":", 1)[0] if ":" in spec else None
    return TASKS.get(name) if name else None


def check_split(task: Task, split: str, spec: str) -> None:
    if split in task.splits or split in task.levels:
        return
    raise ValueError(f"unknown {task.name} split {split!r} in {spec!r}; valid: "
                     f"{', '.join(task.splits)} or a level in {list(task.levels)}")
