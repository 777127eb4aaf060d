"""Datasets named in the config, and the resumable order in which prompts are drawn.

A source is `<task>:<split>` (a built-in task of rgpo_fast/data/tasks.py, e.g.
`countdown:hard`; eval sets come from its held-out partition) or a file read by
`rgpo_fast.data.readers.load_examples` (invalid rows skipped and counted). A file with no
usable row is a user error, reported as such.
"""

from __future__ import annotations

import random
from pathlib import Path

from rgpo_fast.data.readers import NO_RATIONALE, TOO_LONG, DataError, FieldMap, load_examples
from rgpo_fast.data.tasks import check_split, task_of
from rgpo_fast.data.types import Example
from rgpo_fast.errors import UserError


class DataSourceError(UserError, ValueError):
    """A missing, unreadable or empty dataset (exit code 2, names the source)."""


def load_source(spec: str, *, n: int, seed: int, heldout: bool, tokenizer=None,
                max_prompt_tokens: int | None = None, system: str | None = None,
                limit: int | None = None, require_rationale: bool = False,
                report: dict[str, dict] | None = None, role: str = "",
                fields: FieldMap | None = None, processor=None) -> list[Example]:
    """The examples of `spec`. A file's rows that cannot be used are dropped and counted
    by reason; with `report`, `report[role]` gets those counts (ReadSummary.to_dict) and
    the line for the start-up log (`report[role]["line"]`). `require_rationale` (SFT data)
    drops rows without one and refuses a file that has none. `fields` names a file's
    columns; `processor` (a vision-language model's) counts the images' tokens in the
    prompt length."""
    spec = spec.strip()
    task = task_of(spec)
    if task is not None:
        split = spec.split(":", 1)[1]
        try:
            check_split(task, split, spec)
        except ValueError as e:
            raise DataSourceError(str(e)) from None
        examples = task.make(seed, n, split, heldout=heldout)
        if report is not None:
            report[role] = {"source": spec, "generated": len(examples)}
        return examples
    path = Path(spec)
    if not path.exists():
        raise DataSourceError(f"dataset not found: {spec}")
    try:
        examples, summary = load_examples(
            path, on_error="skip", max_prompt_tokens=max_prompt_tokens, tokenizer=tokenizer,
            prompt_kwargs={"system": system} if system else None, limit=limit, verbose=False,
            require_rationale=require_rationale, fields=fields, processor=processor)
    except (DataError, ValueError, OSError) as e:
        raise DataSourceError(f"cannot read dataset {spec}: {e}") from None
    dropped = ", ".join(f"{k} {why}" for why, k in summary.dropped.items()) or "none"
    if report is not None:
        line = (f"data {role}: {spec}: {summary.rows} rows, {summary.kept} used; dropped: "
                f"{dropped}" + (f" (over data.max_prompt_tokens={max_prompt_tokens})"
                                if TOO_LONG in summary.dropped else "")
                + (f"; {summary.empty_rationale} without rationale (never guided)"
                   if summary.empty_rationale else ""))  # fmt: skip
        report[role] = {"source": spec, **summary.to_dict(), "line": line}
    if not examples:
        if require_rationale and summary.dropped.get(NO_RATIONALE):
            raise DataSourceError(
                f"{spec} has no row with a rationale ({summary.rows} rows read): the SFT warm "
                "start trains on rationales, so it would learn to stop at once. Give the rows "
                "a `rationale`, or set --data.sft '' (or --train.sft_steps 0) to skip the "
                "warm start")
        why = f" (first problem: {summary.errors[0]})" if summary.errors else ""
        raise DataSourceError(f"dataset {spec} has no usable rows: {summary.rows} rows read, "
                              f"dropped: {dropped}{why}")
    return examples


def resolve_reward(reward: str, data_spec: str) -> str:
    """`reward`, with `auto` resolved for the data `data_spec`: a built-in task's own verifier
    (arith: exact, countdown: countdown), `exact` for files."""
    if reward != "auto":
        return reward
    task = task_of(data_spec)
    return task.reward if task is not None else "exact"


def checked_reward_for(cfg, data_spec: str):
    """The reward that scores `data_spec` (data.reward, `auto` resolved for it) under the
    reward contract (rewards/contract.py)."""
    from rgpo_fast.rewards.contract import RewardError, checked_reward

    reward = checked_reward(resolve_reward(cfg.data.reward, data_spec),
                            format_weight=cfg.data.format_weight,
                            timeout_s=cfg.data.reward_timeout_s, on_error=cfg.data.reward_errors)
    t = cfg.algo.success_threshold
    if not reward.low < t <= reward.high:
        raise RewardError(f"algo.success_threshold={t:g} is outside reward {reward.name}'s "
                          f"range ({reward.low:g}, {reward.high:g}]: no sample could succeed")
    return reward


def check_data_paths(cfg) -> None:
    """Every file-based source named in the config exists (built-in tasks always do)."""
    specs = [cfg.data.train] + ([cfg.data.sft] if cfg.data.sft else [])
    specs += [spec for _, spec in eval_sources(cfg.data.eval)]
    for spec in specs:
        if task_of(spec) is None and not Path(spec).exists():
            raise DataSourceError(f"dataset not found: {spec}")


def eval_sources(spec: str) -> list[tuple[str, str]]:
    """'arith:easy,arith:hard' -> [('easy', 'arith:easy'), ('hard', 'arith:hard')]; a file's
    name is its stem. The names key the metrics (`<name>_accuracy`), so two sets with one
    name are refused rather than one silently replacing the other."""
    out, seen = [], {}
    for part in (p.strip() for p in spec.split(",")):
        if part:
            name = part.split(":", 1)[1] if task_of(part) else Path(part).stem
            if name in seen:
                raise DataSourceError(
                    f"data.eval: {seen[name]} and {part} would both be reported as {name!r} "
                    "(a built-in task's set is named by its split, a file by its stem); "
                    "rename a file, or evaluate one of them")
            seen[name] = part
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
