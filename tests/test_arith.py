"""The built-in arith task: determinism, correctness of every step, splits, held-out sets."""

import re

import pytest

from rgpo_fast.data.arith import LEVELS, SPLITS, arith_splits, make_arith
from rgpo_fast.data.generated import is_heldout
from rgpo_fast.rewards import exact_reward

_STEP = re.compile(r"^(\d+)([-+*])(\d+)=(\d+)$")


def _eval_step(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def test_deterministic_and_seed_dependent():
    a = make_arith(seed=3, n=50, difficulty="hard")
    b = make_arith(seed=3, n=50, difficulty="hard")
    c = make_arith(seed=4, n=50, difficulty="hard")
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.problem for e in a] != [e.problem for e in c]


@pytest.mark.parametrize("split", list(SPLITS))
def test_rationales_are_correct_step_chains(split):
    for ex in make_arith(seed=0, n=200, difficulty=split):
        lines = ex.rationale.split("\n")
        assert lines[-1] == f"Answer: {ex.answer}"
        steps = [_STEP.match(ln) for ln in lines[:-1]]
        assert all(steps), ex.rationale
        level = LEVELS[ex.meta["level"]]
        assert len(steps) == level.steps == ex.meta["steps"]
        prev = None
        for m in steps:
            a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
            assert _eval_step(a, op, b) == c
            assert 0 <= c <= level.max_value
            assert prev is None or a == prev  # each step continues the last result
            prev = c
        assert str(prev) == ex.answer
        # the expression means the same under standard precedence
        assert eval(ex.problem.removesuffix("=?")) == int(ex.answer)  # noqa: S307
        assert exact_reward(ex.rationale, ex.answer) == 1.0


def test_splits_use_their_levels_and_stay_short():
    easy = make_arith(seed=1, n=300, difficulty="easy")
    hard = make_arith(seed=1, n=300, difficulty="hard")
    assert {e.meta["level"] for e in easy} == set(SPLITS["easy"])
    assert {e.meta["level"] for e in hard} == set(SPLITS["hard"])
    assert max(len(e.problem) + len(e.rationale) for e in hard) <= 64
    assert max(len(e.rationale) for e in easy) < min(len(e.rationale) for e in hard)


def test_heldout_is_disjoint_from_training():
    sets = arith_splits(seed=0, n_train=400, n_eval=64)
    for name in SPLITS:
        train = {e.problem for e in sets[f"{name}_train"]}
        held = [e.problem for e in sets[f"{name}_eval"]]
        assert len(held) == 64 and not train & set(held)
        assert all(is_heldout(p) for p in held) and not any(is_heldout(p) for p in train)
    hard_eval = make_arith(seed=0, n=100, difficulty="hard", heldout=True)
    assert len({e.problem for e in hard_eval}) == 100  # no repeats where distinct ones exist


def test_bad_arguments():
    with pytest.raises(ValueError, match="difficulty"):
        make_arith(0, 5, "impossible")
    with pytest.raises(ValueError, match="level"):
        make_arith(0, 5, 9)
    with pytest.raises(ValueError, match="n must"):
        make_arith(0, -1, "easy")
    assert [e.meta["level"] for e in make_arith(0, 4, "2")] == [2, 2, 2, 2]
