"""`arith`: the built-in multi-step arithmetic task (deterministic, no download).

A problem is a short expression evaluated step by step, e.g.

    problem:   (12+17)*3-19=?
    rationale: 12+17=29
               29*3=87
               87-19=68
               Answer: 68
    answer:    68

The rationale has one step per line and ends with the answer line, so it is both the
SFT target of the warm-start and the hint source of RGPO (segmentation by lines puts one
step in each segment). Brackets are written whenever a multiplication follows an
addition or subtraction, so the expression means the same under the usual precedence
rules as under the left-to-right order of the rationale.

Why this shape (it is what makes RGPO's effect visible on a CPU in minutes):
- every step is the same skill, "a op b = c" with small numbers, which a 4-layer model
  picks up from a short SFT warm-start on the `easy` split (1-2 steps, one-digit operands);
- the `hard` split (3-4 steps, operands up to 19, values up to 99) chains more steps with
  larger numbers than the warm-start saw, so unguided success is rare, but once the first
  steps are shown in the prompt only the remaining steps have to be produced;
- everything stays under ~64 characters (problem + rationale) for fast character-level
  generation.

Determinism: a `random.Random(seed)` drives generation; held-out evaluation problems are
separated from training ones by a hash of the problem text (not by seed), so train and
held-out sets never share a problem whatever seeds are used.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rgpo_fast.data.generated import check_count, problem_hash, sample_examples
from rgpo_fast.data.types import Example


@dataclass(frozen=True)
class ArithLevel:
    """Generation parameters of one difficulty level."""

    steps: int  # number of binary operations (= rationale lines before the answer)
    max_operand: int  # operands of + and - are drawn from [1, max_operand]
    max_value: int  # every intermediate value stays within [0, max_value]
    ops: str  # allowed operators


# Multiplication always uses a one-digit factor (2..9) so a step stays one small fact.
LEVELS: dict[int, ArithLevel] = {
    1: ArithLevel(steps=1, max_operand=9, max_value=18, ops="+-"),
    2: ArithLevel(steps=2, max_operand=9, max_value=99, ops="+-*"),
    3: ArithLevel(steps=3, max_operand=19, max_value=99, ops="+-*"),
    4: ArithLevel(steps=4, max_operand=19, max_value=99, ops="+-*"),
}

SPLITS: dict[str, tuple[int, ...]] = {
    "easy": (1, 2),
    "hard": (3, 4),
    "mixed": (1, 2, 3, 4),
}

# One problem in HELDOUT_MOD goes to held-out evaluation (by hash of its text).


def _one_problem(rng: random.Random, level: ArithLevel) -> tuple[str, list[str], int] | None:
    """Draw one problem; None when the random walk left the allowed value range."""
    value = rng.randint(1, level.max_operand)
    expr, lines, last_op = str(value), [], ""
    for _ in range(level.steps):
        op = rng.choice(level.ops)
        if op == "*":
            b = rng.randint(2, 9)
            new = value * b
        else:
            b = rng.randint(1, level.max_operand)
            new = value + b if op == "+" else value - b
        if not 0 <= new <= level.max_value:
            return None
        if op == "*" and last_op in ("+", "-"):
            expr = f"({expr})"  # keep standard precedence equal to the step order
        lines.append(f"{value}{op}{b}={new}")
        expr = f"{expr}{op}{b}"
        value, last_op = new, op
    return f"{expr}=?", lines, value


def _levels_of(difficulty: int | str) -> tuple[int, ...]:
    if isinstance(difficulty, str):
        if difficulty in SPLITS:
            return SPLITS[difficulty]
        if difficulty.isdigit():
            difficulty = int(difficulty)
        else:
            raise ValueError(
                f"difficulty {difficulty!r} is not a split; valid: {', '.join(SPLITS)} "
                f"or a level in {sorted(LEVELS)}"
            )
    if isinstance(difficulty, bool) or not isinstance(difficulty, int):
        raise TypeError(f"difficulty must be a split name or an int, got {type(difficulty)}")
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty level {difficulty} unknown; valid levels: {sorted(LEVELS)}")
    return (difficulty,)


def make_arith(
    seed: int = 0, n: int = 256, difficulty: int | str = "easy", *, heldout: bool = False
) -> list[Example]:
    """`n` arith problems of `difficulty` (a split "easy"/"hard"/"mixed" or a level 1-4).

    Levels of a split are used in turn (round robin), so a split is balanced. With
    `heldout=False` the problems come from the training partition (repeats allowed, as a
    dataset would have); with `heldout=True` from the disjoint evaluation partition,
    without repeats as long as the level has distinct problems left (level 1 is small).
    Same arguments, same list.
    """
    check_count(n)
    return sample_examples("arith", seed, n, _levels_of(difficulty), heldout, _draw_example)


def _draw_example(rng: random.Random, level: int) -> Example | None:
    """One problem of `level` with its worked solution; None when the random walk left the
    allowed value range."""
    drawn = _one_problem(rng, LEVELS[level])
    if drawn is None:
        return None
    problem, lines, answer = drawn
    return Example(problem=problem, rationale="\n".join([*lines, f"Answer: {answer}"]),
                   answer=str(answer), uid=f"arith-{problem_hash(problem):012x}",
                   meta={"task": "arith", "level": level, "steps": len(lines)})


def arith_splits(seed: int = 0, n_train: int = 1024, n_eval: int = 128) -> dict[str, list[Example]]:
    """The standard sets of the default run: train/eval for easy, hard and mixed."""
    sets: dict[str, list[Example]] = {}
    for name in SPLITS:
        sets[f"{name}_train"] = make_arith(seed, n_train, name)
        sets[f"{name}_eval"] = make_arith(seed, n_eval, name, heldout=True)
    return sets
