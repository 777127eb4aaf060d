"""`countdown`: the built-in search task (deterministic, no download).

Reach a target from a few numbers, each used exactly once, with + - *:

    problem:   3 5 7 2 -> 24
    rationale: 3*7=21 | 5 2 21
               5-2=3 | 21 3
               21+3=24 | 24
    answer:    3 5 7 2 -> 24        (what the verifier checks against)

One step per line combines two numbers of the current pool (given numbers and earlier
results) into a new one and writes the pool left after it; the solution is complete when
a single number is left and it is the target. Writing the pool out keeps the state in
view: a small model then has to search, not to remember which numbers are still free.
Any valid solution counts, not only the reference: the verifier (`countdown_reward`)
replays the lines, checking each step's arithmetic, that it uses numbers still in the pool
(so no number is used twice), and that the last number left is the target.

Why this shape (what RGPO needs, measured in docs/learning.md):
- finding a solution is a search; checking a step is one small fact. A small model learns
  the steps from a short SFT warm start but searches well only over a few numbers;
- a solution prefix removes search: after the first step of a 4-number problem the rest
  is a 3-number problem, after two steps a 2-number one. Partial hints therefore open
  hard problems that plain sampling rarely solves, and what the model writes after the
  hint is its own search;
- numbers 1-6 and values up to 40 keep the arithmetic facts few enough for a tiny
  character-level model; everything stays under ~60 characters.

Splits: `easy` = 3 numbers; `hard` = 4 numbers with a single good first step (of the ~18
possible first steps exactly one leaves a pool from which the target can still be reached,
`good_first_steps`): finding that step is the search, and plain sampling rarely does; a
hint of one step leaves a 3-number problem that the model still has to solve itself (two
steps, usually more than one way to write them). `mixed` = both; `warm` = 2-4 numbers,
unfiltered, for the SFT warm start. Levels "2".."5" name a number count, "4-rare" (at most
3 good first steps, the earlier hard split) and "4-one" (the hard level). Held-out problems
are separated from training ones by a hash of the problem text (not by seed), so train and
held-out sets never share a problem text; with numbers 1-6 a 4-number problem has up to 24
orderings, and another ordering of a held-out problem may be a training one.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

from rgpo_fast.data.generated import check_count, problem_hash, sample_examples
from rgpo_fast.data.types import Example


@dataclass(frozen=True)
class CountdownLevel:
    """Generation parameters of one difficulty level."""

    numbers: int  # how many numbers are given (= steps + 1)
    max_number: int = 6  # given numbers are drawn from [1, max_number]
    max_value: int = 40  # every intermediate value and the target stay within [1, max_value]
    # Keep only problems where at most this many of the possible first steps can still
    # reach the target (None: any problem). Small numbers make most 4-number problems
    # solvable from half of their first steps; the hard split keeps the ones whose search
    # really is a search.
    max_good_first_steps: int | None = None


# Levels by name: the number count, "4-rare" (4 numbers, at most 3 good first steps) or
# "4-one" (4 numbers, a single good first step: the hard split).
LEVELS: dict[str, CountdownLevel] = {
    **{str(n): CountdownLevel(numbers=n) for n in (2, 3, 4, 5)},
    "4-rare": CountdownLevel(numbers=4, max_good_first_steps=3),
    "4-one": CountdownLevel(numbers=4, max_good_first_steps=1),
}
# Two numbers give only ~200 distinct problems (a held-out set of them would repeat): they
# serve the warm start, not evaluation.
SPLITS: dict[str, tuple[str, ...]] = {
    "easy": ("3",),
    "hard": ("4-one",),
    "mixed": ("3", "4-one"),
    "warm": ("2", "3", "4", "5"),
}
OPS = "+-*"

# "a op b=c", optionally followed by "| the numbers left" (a note the verifier ignores).
_STEP = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*(?:\|[^\n]*)?$")
_SPEC = re.compile(r"^\s*((?:\d+\s+)*\d+)\s*->\s*(\d+)\s*$")


def problem_text(numbers: list[int], target: int) -> str:
    return " ".join(map(str, numbers)) + f" -> {target}"


def parse_problem(text: str) -> tuple[list[int], int]:
    """'3 5 7 2 -> 24' -> ([3, 5, 7, 2], 24); ValueError for anything else."""
    m = _SPEC.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not a countdown problem: {text!r} (expected '3 5 7 2 -> 24')")
    return [int(x) for x in m.group(1).split()], int(m.group(2))


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _next_pools(pool: tuple[int, ...]):
    """The pools one step can leave (positive results only, as the generator writes them)."""
    for i in range(len(pool)):
        for j in range(i + 1, len(pool)):
            rest = pool[:i] + pool[i + 1 : j] + pool[j + 1 :]
            a, b = pool[i], pool[j]
            for value in {a + b, a * b, abs(a - b)} - {0}:
                yield tuple(sorted((*rest, value)))


@functools.lru_cache(maxsize=1 << 16)
def _reachable(pool: tuple[int, ...], target: int) -> bool:
    if len(pool) == 1:
        return pool[0] == target
    return any(_reachable(nxt, target) for nxt in _next_pools(pool))


def good_first_steps(numbers: list[int], target: int) -> int:
    """How many distinct first steps leave a pool from which `target` can still be reached
    (exhaustive search: at most 6 pairs x 3 operations x the rest, tiny for 4-5 numbers)."""
    return sum(_reachable(nxt, target) for nxt in set(_next_pools(tuple(sorted(numbers)))))


def _one_problem(rng: random.Random, level: CountdownLevel):
    """Draw numbers and a random solution; None when a value left the allowed range."""
    numbers = [rng.randint(1, level.max_number) for _ in range(level.numbers)]
    pool, lines = list(numbers), []
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        a, b = pool[i], pool[j]
        op = rng.choice(OPS)
        if op == "-" and a < b:
            a, b = b, a  # subtraction keeps values positive: larger first
        value = _apply(a, op, b)
        if not 1 <= value <= level.max_value:
            return None
        pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [value]
        lines.append(f"{a}{op}{b}={value} | " + " ".join(map(str, pool)))
    return numbers, pool[0], lines


def check_solution(numbers: list[int], target: int, text: str) -> bool:
    """Does `text` (step lines, blank lines ignored) reach `target` from `numbers`, each
    number used exactly once, with correct arithmetic? A step's "| pool" note is not
    checked: it is the model's scratch state, and any valid solution counts."""
    pool = list(numbers)
    steps = 0
    for line in text.strip().splitlines():
        if not line.strip():
            continue
        m = _STEP.match(line)
        if m is None:
            return False
        a, op, b, value = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if _apply(a, op, b) != value:
            return False
        for x in (a, b):
            if x not in pool:
                return False  # a number not given, or used up
            pool.remove(x)
        pool.append(value)
        steps += 1
    return steps > 0 and pool == [target]


def countdown_reward(completion: str, answer: str) -> float:
    """1.0 when `completion` solves the problem `answer` ('3 5 7 2 -> 24'), else 0.0."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be str, got {type(completion).__name__}")
    numbers, target = parse_problem(answer)
    return float(check_solution(numbers, target, completion))


def _levels_of(difficulty: int | str) -> tuple[str, ...]:
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, str)):
        raise TypeError(f"difficulty must be a split or level name, got {type(difficulty)}")
    name = str(difficulty)
    if name in SPLITS:
        return SPLITS[name]
    if name in LEVELS:
        return (name,)
    raise ValueError(f"countdown difficulty {difficulty!r} is unknown; valid: "
                     f"{', '.join(SPLITS)} or a level in {', '.join(LEVELS)}")


def make_countdown(seed: int = 0, n: int = 256, difficulty: int | str = "easy", *,
                   heldout: bool = False) -> list[Example]:  # fmt: skip
    """`n` countdown problems of `difficulty` (a split, or a level: "2".."5", "4-rare").

    Levels of a split are used in turn, so a split is balanced. `heldout=False` draws from
    the training partition, `heldout=True` from the disjoint evaluation partition without
    repeats (as long as the level has distinct problems left). Same arguments, same list.
    """
    check_count(n)
    return sample_examples("countdown", seed, n, _levels_of(difficulty), heldout, _draw_example)


def _draw_example(rng: random.Random, level: str) -> Example | None:
    """One problem of `level` with its reference solution; None when the draw left the
    value range or, for a filtered level, has too many good first steps."""
    drawn = _one_problem(rng, LEVELS[level])
    if drawn is None:
        return None
    numbers, target, lines = drawn
    cap = LEVELS[level].max_good_first_steps
    if cap is not None and good_first_steps(numbers, target) > cap:
        return None
    problem = problem_text(numbers, target)
    return Example(problem=problem, rationale="\n".join(lines), answer=problem,
                   uid=f"countdown-{problem_hash(problem):012x}",
                   meta={"task": "countdown", "level": level, "steps": len(lines)})
