"""What the built-in generated tasks share (data/arith.py, data/countdown.py): the held-out
partition, decided by a hash of the problem text (not by seed, so train and held-out sets
never share a problem whatever seeds are used), and the loop that fills a list from a
per-level problem generator.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from rgpo_fast.data.types import Example

HELDOUT_MOD = 8  # one problem in 8 is held out
# Held-out sets avoid repeats, but a small level may have few distinct held-out problems
# (arith level 1: ~16): after this many repeats in a row a repeat is accepted.
MAX_REPEAT_MISSES = 200


def problem_hash(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:12], 16)


def is_heldout(problem: str) -> bool:
    """True if `problem` belongs to the held-out evaluation partition."""
    return problem_hash(problem) % HELDOUT_MOD == 0


def check_count(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")


def sample_examples(task: str, seed: int, n: int, levels: Sequence[Any], heldout: bool,
                    draw: Callable[[random.Random, Any], Example | None],
                    key: Callable[[Example], str] = lambda ex: ex.problem) -> list[Example]:
    """`n` examples of `task`, the `levels` used in turn (so a split is balanced), each
    from `draw(rng, level)` (None: the draw is rejected and the level drawn again), kept
    when it is in the partition `heldout` asks for; a held-out set skips repeats (up to
    MAX_REPEAT_MISSES in a row). `key` is what identifies a problem (its text; for a visual
    task the question and the image). Same arguments, same list."""
    rng = random.Random(f"{task}:{seed}:{int(heldout)}")
    out: list[Example] = []
    seen: set[str] = set()
    misses = 0  # consecutive draws rejected for being a repeat
    while len(out) < n:
        ex = draw(rng, levels[len(out) % len(levels)])
        if ex is None or is_heldout(key(ex)) != heldout:
            continue
        if heldout and key(ex) in seen and misses < MAX_REPEAT_MISSES:
            misses += 1
            continue
        misses = 0
        seen.add(key(ex))
        out.append(ex)
    return out
