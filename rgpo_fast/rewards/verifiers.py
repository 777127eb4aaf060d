"""Reward functions: `fn(completion, answer) -> float in [0, 1]`, registered by name.

- `exact`: the completion's final answer (last boxed / "Answer:" line), normalised, equals
  the normalised reference. The `arith` task's reward.
- `math_verify`: symbolic equivalence with the `math-verify` package (fractions, LaTeX,
  sets...), falling back to `exact` when math-verify cannot parse.
- `format`: 1 if the completion ends with an answer line or a boxed answer, else 0; meant
  to be mixed in with a small weight (see `get_reward_fn(..., format_weight=)`).
- `countdown`: the completion's step lines reach the target of the problem in `answer`,
  each given number used once, every step's arithmetic right (rgpo_fast/data/countdown.py).
- `shapes`: `countdown` after the completion's first line, the value read off the image
  (rgpo_fast/data/shapes.py).

In the trainer every reward, these and the user's, is called under the reward contract
(rewards/contract.py: a time limit on every call, a finite value in the declared range).
`math_verify_reward` also carries its own limit for use on its own; a timed-out
verification there scores 0 and is counted in `TIMEOUTS`.
"""

from __future__ import annotations

import functools
import logging
import numbers
from collections.abc import Callable, Sequence

from rgpo_fast.algos.registry import Registry
from rgpo_fast.data.countdown import countdown_reward
from rgpo_fast.data.shapes import shapes_reward
from rgpo_fast.rewards.extract import answer_line, extract_answer, last_boxed, normalize_answer
from rgpo_fast.rewards.timeout import run_with_timeout

RewardFn = Callable[[str, str], float]
REWARDS: Registry = Registry("reward function")

REWARDS.register("countdown")(countdown_reward)
REWARDS.register("shapes")(shapes_reward)

DEFAULT_TIMEOUT_S = 5.0
# Completions are cut to their last MAX_CHARS characters before parsing: the answer is at
# the end, and the cost of regex/sympy parsing grows with length.
MAX_CHARS = 4000
TIMEOUTS = {"count": 0}


def _check(completion: str, answer: str) -> None:
    if not isinstance(completion, str):
        raise TypeError(f"completion must be str, got {type(completion).__name__}")
    if not isinstance(answer, str):
        raise TypeError(f"answer must be str, got {type(answer).__name__}")


@REWARDS.register("exact")
def exact_reward(completion: str, answer: str) -> float:
    """1.0 if the normalised final answer equals the normalised reference answer."""
    _check(completion, answer)
    pred = extract_answer(completion[-MAX_CHARS:])
    if pred is None or not answer.strip():
        return 0.0
    return float(normalize_answer(pred) == normalize_answer(answer))


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns once when its SIGALRM timeouts are disabled; we disable them on
    purpose (our own guard is in charge), so that warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


def _math_verify_core(completion: str, answer: str) -> float:
    from math_verify import parse, verify  # noqa: PLC0415 (heavy import, only when used)

    gold = parse(f"${answer}$" if "$" not in answer else answer, parsing_timeout=None)
    if not gold:
        return exact_reward(completion, answer)
    # Prefer an explicit final answer; parse it alone so that numbers in the reasoning
    # cannot be picked up instead. Without one, let math-verify search the whole text.
    pred_text = extract_answer(completion)
    candidates = []
    if pred_text is not None:
        candidates.append(f"${pred_text}$")
        candidates.append(normalize_answer(pred_text))  # units stripped: "12 cm" -> "12"
    else:
        candidates.append(completion)
    for cand in candidates:
        pred = parse(cand, parsing_timeout=None)
        if pred and verify(gold, pred, timeout_seconds=None):
            return 1.0
    return 0.0


@REWARDS.register("math_verify")
def math_verify_reward(
    completion: str, answer: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> float:
    """1.0 if math-verify finds the final answer equivalent to `answer` within `timeout_s`."""
    _check(completion, answer)
    if not answer.strip():
        return 0.0
    text = completion[-MAX_CHARS:]
    value, timed_out = run_with_timeout(lambda: _math_verify_core(text, answer), timeout_s, 0.0)
    if timed_out:
        TIMEOUTS["count"] += 1
    return value


@REWARDS.register("format")
def format_reward(completion: str, answer: str = "") -> float:
    """1.0 if the completion's last non-empty line is an answer line or holds a boxed answer."""
    _check(completion, answer)
    lines = [ln for ln in completion.strip().splitlines() if ln.strip()]
    if not lines:
        return 0.0
    last = lines[-1]
    return float(answer_line(last) is not None or last_boxed(last) is not None)


def with_format(fn: RewardFn, format_weight: float) -> RewardFn:
    """`fn` mixed with the format reward: (1 - w) * fn + w * format (`fn` itself when
    w = 0). A value that is not a number is passed on as it is, for the caller's checks
    (rewards/contract.py) to name."""
    if format_weight <= 0.0:
        return fn

    def mixed(completion: str, answer: str) -> float:
        r = fn(completion, answer)
        if not isinstance(r, numbers.Real):
            return r
        return (1.0 - format_weight) * r + format_weight * format_reward(completion, answer)

    return mixed


def get_reward_fn(name: str, *, format_weight: float = 0.0, **kwargs) -> RewardFn:
    """Reward function `name` (exact, math_verify, format), optionally mixed with format.

    With `format_weight` w > 0 the reward is (1 - w) * correct + w * format, still in [0, 1].
    Extra kwargs (e.g. `timeout_s` for math_verify) are bound to the function.
    """
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
    reward = with_format(functools.partial(REWARDS.get(name), **kwargs), format_weight)
    reward.__name__ = f"{name}_reward" + (f"+format{format_weight:g}" if format_weight else "")
    return reward


def score_batch(fn: RewardFn, completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """Apply `fn` pairwise; lengths must match."""
    if len(completions) != len(answers):
        raise ValueError(
            f"completions ({len(completions)}) and answers ({len(answers)}) differ in length"
        )
    return [fn(c, a) for c, a in zip(completions, answers)]
