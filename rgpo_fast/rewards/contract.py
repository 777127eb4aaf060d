"""The reward contract: what the trainer accepts from any reward, built-in or the user's.

A reward is `fn(completion: str, answer: str) -> number`. The trainer calls it through
`CheckedReward`, which enforces:

- **a time limit on every call** (`data.reward_timeout_s`, rewards/timeout.py): a call that
  runs over scores the bottom of the range and is counted (`reward/timeouts`), so one
  pathological completion cannot hang a step or an evaluation;
- **a finite number in the declared range**: [0, 1] unless the function declares another
  as its `reward_range` attribute (`fn.reward_range = (-1.0, 1.0)`), which must hold
  `algo.success_threshold`, the one value at or above which a sample counts as a success
  (guidance trigger, acceptance, accuracy);
- **errors are the user's to see**: an exception, a non-number, NaN/inf or a value outside
  the range stops the run with one `error:` line naming the reward, the sample and the
  value (`data.reward_errors=stop`, the default), or scores that sample the bottom of the
  range and counts it (`=zero`, `reward/zeroed`).

`probe` tries a reward on a few rows of each dataset at start-up, before anything is
trained, so a reward that does not fit the data fails in seconds rather than after the warm
start. `load_reward` resolves `data.reward`: a registered name (rewards/verifiers.py) or the
user's own function, `package.module:function` or `path/to/file.py:function`.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rgpo_fast.data.types import Example
from rgpo_fast.errors import UserError
from rgpo_fast.rewards.timeout import run_with_timeout
from rgpo_fast.rewards.verifiers import REWARDS, with_format

RewardFn = Callable[[str, str], float]
ON_ERROR = ("stop", "zero")
PROBE_ROWS = 4


class RewardError(UserError):
    """A reward that broke the contract (module docstring), or cannot be loaded."""


def is_import_spec(spec: str) -> bool:
    """`module:function` or `file.py:function` (a registered name has no colon)."""
    return ":" in spec


def load_reward(spec: str) -> RewardFn:
    """The function `spec` names: a registered reward, `package.module:function`, or
    `path/to/file.py:function`."""
    if not is_import_spec(spec):
        try:
            return REWARDS.get(spec)
        except ValueError as e:
            raise RewardError(str(e)) from None
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise RewardError(f"data.reward={spec!r}: no file {path}")
            mod_spec = importlib.util.spec_from_file_location(f"rgpo_user_reward_{path.stem}",
                                                              path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except RewardError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module: any failure is theirs to see
        raise RewardError(f"data.reward={spec!r}: cannot import {where}: "
                          f"{type(e).__name__}: {one_line(str(e))}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardError(f"data.reward={spec!r}: {where} has no function {name!r}")
    return fn


def one_line(text: str, limit: int = 160) -> str:
    """`text` for an error line: newlines shown as \\n, at most `limit` characters."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def declared_range(fn: RewardFn, name: str) -> tuple[float, float]:
    """`fn.reward_range` (low, high), default (0, 1)."""
    rng = getattr(fn, "reward_range", (0.0, 1.0))
    try:
        low, high = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise RewardError(f"reward {name}: reward_range must be (low, high), got {rng!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise RewardError(f"reward {name}: reward_range must be finite with low < high, "
                          f"got {rng!r}")
    return low, high


@dataclass
class CheckedReward:
    """A reward called under the contract (module docstring); `counts` are cumulative."""

    fn: RewardFn
    name: str
    low: float = 0.0
    high: float = 1.0
    timeout_s: float = 5.0
    on_error: str = "stop"
    counts: dict[str, int] = field(default_factory=lambda: {"timeouts": 0, "zeroed": 0})

    def __call__(self, completion: str, answer: str, *, where: str = "") -> float:
        """The checked value; `where` names the sample in errors ("problem x.jsonl:3")."""
        try:
            value, timed_out = run_with_timeout(lambda: self.fn(completion, answer),
                                                self.timeout_s, None)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the reward's own failure
            return self._broken(f"raised {type(e).__name__}: {one_line(str(e))}", where)
        if timed_out:
            self.counts["timeouts"] += 1
            return self.low
        problem = self.violation(value)
        if problem is not None:
            return self._broken(problem, where)
        return float(value)

    def violation(self, value) -> str | None:
        """Why `value` breaks the contract, or None."""
        if not isinstance(value, numbers.Real):
            return f"returned {one_line(repr(value))} ({type(value).__name__}), not a number"
        v = float(value)
        if not math.isfinite(v):
            return f"returned {v}"
        if not self.low <= v <= self.high:
            return (f"returned {v}, outside its range [{self.low:g}, {self.high:g}] (declare "
                    "another with the function's reward_range attribute)")
        return None

    def _broken(self, problem: str, where: str) -> float:
        if self.on_error == "zero":
            self.counts["zeroed"] += 1
            return self.low
        at = f" on {where}" if where else ""
        raise RewardError(f"reward {self.name} {problem}{at}; fix the reward, or set "
                          "--data.reward_errors zero to score such samples "
                          f"{self.low:g} and count them")

    def pop_counts(self) -> dict[str, int]:
        """The counts since the last call (a step's), reset."""
        out, self.counts = self.counts, {"timeouts": 0, "zeroed": 0}
        return out


def score(fn: RewardFn, completion: str, answer: str, where: str) -> float:
    """`fn`'s value; a CheckedReward also gets `where` (the sample, named in its errors)."""
    if isinstance(fn, CheckedReward):
        return fn(completion, answer, where=where)
    return float(fn(completion, answer))


def checked_reward(spec: str, *, format_weight: float = 0.0, timeout_s: float = 5.0,
                   on_error: str = "stop") -> CheckedReward:
    """`data.reward`-style `spec` (a resolved name or an import spec) under the contract,
    optionally mixed with the format reward: (1 - w) * reward + w * format, which stays in
    the reward's range when that contains [0, 1]."""
    if on_error not in ON_ERROR:
        raise RewardError(f"data.reward_errors={on_error!r} is invalid; valid: "
                          f"{', '.join(ON_ERROR)}")
    base = raw = load_reward(spec)
    low, high = declared_range(raw, spec)
    if spec == "math_verify":  # its own limit would re-arm ours: one limit, the contract's
        def base(completion: str, answer: str) -> float:
            return raw(completion, answer, timeout_s=None)

    if format_weight > 0.0 and not (low <= 0.0 and high >= 1.0):
        raise RewardError(f"data.format_weight mixes the [0, 1] format reward into {spec}, "
                          f"whose range [{low:g}, {high:g}] does not contain it")
    base = with_format(base, format_weight)

    name = spec + (f"+format{format_weight:g}" if format_weight else "")
    return CheckedReward(base, name, low, high, timeout_s, on_error)


def probe(reward: CheckedReward, examples: Sequence[Example], source: str,
          rows: int = PROBE_ROWS) -> str | None:
    """Try `reward` on the first `rows` examples of `source`, each scored on its reference
    rationale (or its bare answer when it has none). Raises RewardError when the reward
    breaks the contract on a row (with `on_error=zero`: on every row; a timeout counts as
    breaking it here, where nothing is generated yet). -> a notice when every rationale
    scores the bottom of the range (the reward may not fit the data), else None."""
    tried = list(examples)[:rows]
    if not tried:
        return None
    strict = CheckedReward(reward.fn, reward.name, reward.low, reward.high, reward.timeout_s,
                           "stop")  # fmt: skip
    failures, low_scores, with_rationale = [], 0, 0
    for ex in tried:
        text = ex.rationale or f"Answer: {ex.answer}"
        where = f"the reference of {source} problem {ex.uid or '?'}"
        try:
            value = strict(text, ex.answer, where=where)
            if strict.counts["timeouts"]:
                raise RewardError(f"reward {reward.name} did not return within "
                                  f"data.reward_timeout_s={reward.timeout_s:g}s on {where}")
        except RewardError as e:
            if reward.on_error == "stop":
                raise RewardError(f"start-up check: {e}") from None
            failures.append(str(e))
            continue
        if ex.rationale:
            with_rationale += 1
            low_scores += value <= reward.low
    if len(failures) == len(tried):
        raise RewardError(f"start-up check: reward {reward.name} fails on every one of the "
                          f"first {len(tried)} rows of {source}: {failures[0]}")
    if with_rationale and low_scores == with_rationale:
        return (f"notice: reward {reward.name} gives the reference rationale of each of the "
                f"first {with_rationale} problems of {source} its lowest score: check that "
                "the reward fits the data (data.reward)")
    return None
