"""Datasets named in the config, and the resumable order in which prompts are drawn.

A source is `<task>:<split>` (a built-in task of rgpo_fast/data/tasks.py, e.g.
`countdown:hard`; eval sets come from its held-out partition) or a file read by
`rgpo_fast.data.readers.load_examples` (invalid rows skipped and counted). A file with no
usable row is a user error, reported as such.
"""

from __future__ import annotations

import random
from pathlib import Path

from rgpo_fast.data.readers import DataError, load_examples
from rgpo_fast.data.tasks import check_split, task_of
from rgpo_fast.data.types import Example
from rgpo_fast.errors import UserError


class DataSourceError(UserError, ValueError):
    """A missing, unreadable or empty dataset (exit code 2, names the source)."""


def load_source(spec: str, *, n: int, seed: int, heldout: bool, tokenizer=None,
                max_prompt_tokens: int | None = None, system: str | None = None,
                limit: int | None = None) -> list[Example]:
    spec = spec.strip()
    task = task_of(spec)
    if task is not None:
        split = spec.split(":", 1)[1]
        try:
            check_split(task, split, spec)
        except ValueError as e:
            raise DataSourceError(str(e)) from None
        return task.make(seed, n, split, heldout=heldout)
    path = Path(spec)
    if not path.exists():
        raise DataSourceError(f"dataset not found: {spec}")
    try:
        examples, summary = load_examples(
            path, on_error="skip", max_prompt_tokens=max_prompt_tokens, tokenizer=tokenizer,
            prompt_kwargs={"system": system} if system else None, limit=limit, verbose=False)
    except (DataError, ValueError, OSError) as e:
        raise DataSourceError(f"cannot read dataset {spec}: {e}") from None
    if not examples:
        why = f" (first problem: {summary.errors[0]})" if summary.errors else ""
        raise DataSourceError(f"dataset {spec} has no usable rows: {summary.rows} rows read, "
                              f"{summary.skipped_invalid} invalid, {summary.skipped_too_long} "
                              f"over the prompt length limit{why}")
    return examples


def resolve_reward(reward: str, data_spec: str) -> str:
    """`reward`, with `auto` resolved for the data `data_spec`: a built-in task's own verifier
    (arith: exact, countdown: countdown), `exact` for files."""
    if reward != "auto":
        return reward
    task = task_of(data_spec)
    return task.reward if task is not None else "exact"


def reward_name(cfg) -> str:
    """data.reward of the run, `auto` resolved for its training data."""
    return resolve_reward(cfg.data.reward, cfg.data.train)


def check_data_paths(cfg) -> None:
    """Every file-based source named in the config exists (built-in tasks always do)."""
    specs = [cfg.data.train] + ([cfg.data.sft] if cfg.data.sft else [])
    specs += [spec for _, spec in eval_sources(cfg.data.eval)]
    for spec in specs:
        if task_of(spec) is None and not Path(spec).exists():
            raise DataSourceError(f"dataset not found: {spec}")


def eval_sources(spec: str) -> list[tuple[str, str]]:
    """'arith:easy,arith:hard' -> [('easy', 'arith:easy'), ('hard', 'arith:hard')]; a file's
    name is its stem."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if part:
            name = part.split(":", 1)[1] if task_of(part) else Path(part).stem
            out.append((name, part))
    return out


class PromptSampler:
    """Shuffled passes over the training examples; the position is checkpointed.

    Epoch e uses the permutation seeded by (seed, e), so the state is just two integers
    and a resumed run draws exactly the prompts the interrupted one would have.
    """

    def __init__(self, examples: list[Example], seed: int) -> None:
        if not examples:
            raise DataSourceError("no training examples")
        self.examples = examples
        self.seed = seed
        self.epoch = 0
        self.pos = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next(self, k: int) -> list[Example]:
        out = []
        while len(out) < k:
            if self.pos >= len(self._perm):
                self.epoch += 1
                self.pos = 0
                self._perm = self._permutation(self.epoch)
            out.append(self.examples[self._perm[self.pos]])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.pos = int(state["pos"])
        self._perm = self._permutation(self.epoch)
