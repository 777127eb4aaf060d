"""The built-in `countdown` task: generator, verifier, splits, held-out separation, and its
place among the built-in tasks (data specs, reward)."""

import pytest

from rgpo_fast.data.countdown import (
    LEVELS,
    check_solution,
    countdown_reward,
    good_first_steps,
    make_countdown,
    parse_problem,
)
from rgpo_fast.data.generated import is_heldout
from rgpo_fast.data.tasks import TASKS, task_of
from rgpo_fast.rewards import get_reward_fn
from rgpo_fast.trainer.data_sources import DataSourceError, load_source

PROBLEM = "3 5 7 2 -> 24"


def test_reference_solutions_verify_and_have_one_step_per_number():
    for split in ("easy", "hard", "mixed", "warm", "2", "5"):
        for ex in make_countdown(1, 60, split):
            numbers, target = parse_problem(ex.problem)
            steps = ex.rationale.splitlines()
            assert len(steps) == len(numbers) - 1 == ex.meta["steps"]
            assert countdown_reward(ex.rationale, ex.answer) == 1.0
            level = LEVELS[ex.meta["level"]]
            assert 1 <= target <= level.max_value
            assert all(1 <= x <= level.max_number for x in numbers)
    counts = {len(parse_problem(e.problem)[0]) for e in make_countdown(0, 30, "mixed")}
    assert counts == {3, 4}
    assert {len(parse_problem(e.problem)[0]) for e in make_countdown(0, 30, "warm")} == {2, 3, 4, 5}
    assert {len(parse_problem(e.problem)[0]) for e in make_countdown(0, 9, "hard")} == {4}


def test_good_first_steps_by_hand_and_the_hard_filter():
    # 2 2 -> 4: 2+2 and 2*2 both give the pool (4,): one distinct first step reaches it
    assert good_first_steps([2, 2], 4) == 1
    assert good_first_steps([1, 2], 7) == 0
    # 1 2 3 -> 6: the first steps leave the pools 3 3, 2 3 (by 1*2 or 1*3), 2 4, 1 5, 1 6,
    # from which 6 is one step away, and 1 3, 2 2, 1 1, from which it is not
    assert good_first_steps([1, 2, 3], 6) == 5
    for text in ("1+2=3\n3+3=6", "1*2=2\n2*3=6", "1+3=4\n2+4=6", "2+3=5\n1+5=6",
                 "2*3=6\n1*6=6"):
        assert check_solution([1, 2, 3], 6, text)
    hard = make_countdown(0, 40, "hard")
    # exactly one first step can still reach the target, and the reference takes it: the
    # rest of its solution is a 3-number problem that stays solvable
    assert all(good_first_steps(*parse_problem(e.problem)) == 1 for e in hard)
    for e in hard:
        numbers, target = parse_problem(e.problem)
        pool = [int(x) for x in e.rationale.splitlines()[0].split("|")[1].split()]
        assert len(pool) == 3 and good_first_steps(pool, target) >= 1
    assert all(good_first_steps(*parse_problem(e.problem)) <= 3
               for e in make_countdown(0, 40, "4-rare"))
    plain = make_countdown(0, 200, "4")
    assert sum(good_first_steps(*parse_problem(e.problem)) > 3 for e in plain) > 100


def test_hard_split_training_set_and_its_repeats():
    # the benchmark's 2048 training problems: none held out; with numbers 1-6 there are
    # ~460 single-good-first-step problems up to the order of their numbers, so the set
    # repeats problems (docs/learning.md reports training accuracy beside held-out)
    from rgpo_fast.data.generated import is_heldout

    train = make_countdown(0, 2048, "hard")
    assert not any(is_heldout(e.problem) for e in train)
    texts = {e.problem for e in train}
    canonical = {(tuple(sorted(parse_problem(t)[0])), parse_problem(t)[1]) for t in texts}
    assert len(texts) > 1400 and 400 < len(canonical) < 470


def test_any_valid_solution_counts():
    assert countdown_reward("3*7=21\n5-2=3\n21+3=24", PROBLEM) == 1.0
    assert countdown_reward("7*3=21\n5-2=3\n3+21=24", PROBLEM) == 1.0  # other order
    assert countdown_reward("5*2=10\n10+7=17\n17+3=20\n", "3 5 7 2 -> 20") == 1.0
    assert countdown_reward("\n 3 * 7 = 21 \n\n5-2=3\n21+3=24\n", PROBLEM) == 1.0  # spacing
    assert countdown_reward("2-5=-3\n-3+7=4\n4*3=12", "3 5 7 2 -> 12") == 1.0  # negatives
    # the "| pool" note of the reference format, or a wrong one: scratch, not checked
    assert countdown_reward("3*7=21 | 5 2 21\n5-2=3 | 21 3\n21+3=24 | 24", PROBLEM) == 1.0
    assert countdown_reward("3*7=21 | 9\n5-2=3 |\n21+3=24", PROBLEM) == 1.0


@pytest.mark.parametrize("text, why", [
    ("3*7=22\n5-2=3\n22+3=25", "wrong arithmetic"),
    ("3*7=21\n21+3=24", "a given number left unused"),
    ("3*7=21\n7-2=5\n21+3=24", "a number used twice"),
    ("3*8=24", "a number not given"),
    ("3*7=21\n5-2=3\n21+3=24\n24-0=24", "a number not given (0)"),
    ("3*7=21\n5-2=3\n21+3=24\nAnswer: 24", "a line that is not a step"),
    ("", "no step"),
    ("banana", "no step"),
    ("3/7=0", "an operator that is not allowed"),
    ("3*7=21 5-2=3 21+3=24", "steps on one line"),
])
def test_invalid_solutions_are_rejected(text, why):
    assert countdown_reward(text, PROBLEM) == 0.0, why


def test_bad_problem_strings_and_types():
    with pytest.raises(ValueError, match="not a countdown problem"):
        countdown_reward("3*7=21", "24")
    with pytest.raises(ValueError, match="not a countdown problem"):
        parse_problem("3 5 -> ")
    with pytest.raises(TypeError):
        countdown_reward(None, PROBLEM)
    assert parse_problem(" 3  5 -> 8 ") == ([3, 5], 8)
    assert not check_solution([3, 5], 8, "3+5=8\n8+0=8")


def test_heldout_partition_is_disjoint_and_deterministic():
    train = make_countdown(0, 400, "mixed")
    held = make_countdown(0, 200, "mixed", heldout=True)
    assert {e.problem for e in train}.isdisjoint({e.problem for e in held})
    assert all(is_heldout(e.problem) for e in held) and not any(is_heldout(e.problem)
                                                                for e in train)
    assert len({e.problem for e in held}) == len(held)  # no repeats in held-out sets
    assert [e.problem for e in make_countdown(0, 50, "hard")] == [
        e.problem for e in make_countdown(0, 50, "hard")]
    assert make_countdown(1, 50, "hard") != make_countdown(0, 50, "hard")
    other_seed = make_countdown(7, 200, "mixed", heldout=True)
    assert {e.problem for e in train}.isdisjoint({e.problem for e in other_seed})


def test_bad_difficulty():
    with pytest.raises(ValueError, match="valid: easy, hard, mixed, warm or a level in 2, 3"):
        make_countdown(0, 4, "medium")
    with pytest.raises(ValueError, match="difficulty 9 is unknown"):
        make_countdown(0, 4, 9)
    with pytest.raises(ValueError):
        make_countdown(0, -1, "easy")


def test_built_in_tasks_by_spec_and_reward():
    assert task_of("countdown:hard") is TASKS["countdown"] and task_of("x.jsonl") is None
    ex = load_source("countdown:hard", n=5, seed=0, heldout=True)
    assert len(ex) == 5 and all(e.uid.startswith("countdown-") for e in ex)
    assert len(load_source("countdown:4", n=3, seed=0, heldout=False)) == 3
    with pytest.raises(DataSourceError, match="unknown countdown split 'medium'"):
        load_source("countdown:medium", n=3, seed=0, heldout=False)
    fn = get_reward_fn(TASKS["countdown"].reward)
    assert fn("3*7=21\n5-2=3\n21+3=24", PROBLEM) == 1.0
