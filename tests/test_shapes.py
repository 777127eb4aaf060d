"""The built-in visual task `shapes`: problems, images, splits and its verifier."""

from collections import Counter

import pytest

from rgpo_fast.data.countdown import good_first_steps, parse_problem
from rgpo_fast.data.shapes import COLOURS, VALUES, make_shapes, shapes_reward
from rgpo_fast.data.tasks import TASKS
from rgpo_fast.rewards import REWARDS


def _main_colour(img) -> str:
    """The colour name nearest the image's most common non-white pixel."""
    counts = Counter(p for p in img.getdata() if p != (255, 255, 255))
    pixel = counts.most_common(1)[0][0]
    return min(COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], pixel)))


def test_problems_hide_one_number_behind_the_image():
    colours = Counter()
    for ex in make_shapes(0, 60, "mixed"):
        colour = ex.meta["colour"]
        colours[colour] += 1
        assert _main_colour(ex.images[0]) == colour  # the image shows the colour
        numbers, target = parse_problem(ex.answer)
        shown = ex.problem.split(" -> ")[0].split()
        assert shown.count("x") == 1 and len(shown) == len(numbers)
        resolved = [VALUES[colour] if s == "x" else int(s) for s in shown]
        assert resolved == numbers and ex.problem.endswith(f"-> {target}")
        read = ex.rationale.splitlines()[0]
        assert read == f"{colour}={VALUES[colour]} | " + " ".join(map(str, numbers))
        assert shapes_reward(ex.rationale, ex.answer) == 1.0
    assert set(colours) == set(COLOURS)  # every colour is asked


def test_reward_checks_the_steps_after_the_read():
    ex = make_shapes(3, 1, "easy")[0]
    steps = ex.rationale.splitlines()[1:]
    assert shapes_reward("\n".join(steps), ex.answer) == 1.0  # the read line is optional
    colour = ex.meta["colour"]
    other = next(c for c in COLOURS if c != colour)
    wrong = ex.rationale.replace(f"{colour}={VALUES[colour]}", f"{other}={VALUES[other]}", 1)
    assert shapes_reward(wrong, ex.answer) == 1.0  # the read line is a note: steps decide
    assert shapes_reward("red=1 | 1\n1+1=2 | 2", ex.answer) == 0.0
    assert shapes_reward("", ex.answer) == 0.0
    with pytest.raises(TypeError):
        shapes_reward(None, ex.answer)


def test_splits_determinism_and_heldout():
    a, b = make_shapes(5, 16, "hard"), make_shapes(5, 16, "hard")
    assert [e.problem for e in a] == [e.problem for e in b]
    assert all(x.images[0].tobytes() == y.images[0].tobytes() for x, y in zip(a, b))
    assert all(len(parse_problem(e.answer)[0]) == 4 for e in a)
    assert all(good_first_steps(*parse_problem(e.answer)) == 1 for e in a)
    assert {len(parse_problem(e.answer)[0]) for e in make_shapes(0, 40, "warm")} == {2, 3, 4, 5}
    train = {e.meta["key"] for e in make_shapes(0, 300, "mixed")}
    held = {e.meta["key"] for e in make_shapes(0, 100, "mixed", heldout=True)}
    assert not train & held
    assert TASKS["shapes"].reward == "shapes" and "shapes" in REWARDS
    with pytest.raises(ValueError, match="unknown"):
        make_shapes(0, 1, "nope")
