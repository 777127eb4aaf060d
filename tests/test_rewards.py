"""Rewards: extraction, normalisation, exact match, math-verify, format, registry, timeouts."""

import threading
import time

import pytest

from rgpo_fast.rewards import (
    REWARDS,
    TIMEOUTS,
    exact_reward,
    extract_answer,
    format_reward,
    get_reward_fn,
    math_verify_reward,
    normalize_answer,
    run_with_timeout,
    score_batch,
    verifiers,
)


def test_extract_prefers_last_boxed_then_last_answer_line():
    assert extract_answer("x \\boxed{3} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_answer("Answer: 4\nwait\nAnswer: 5") == "5"
    assert extract_answer("**Answer:** 7") == "7"
    assert extract_answer("no final answer 9") is None
    assert extract_answer("\\boxed{unbalanced") is None


def test_normalize_strips_units_currency_separators():
    assert normalize_answer("12 cm") == "12"
    assert normalize_answer("$1,000.") == "1000"
    assert normalize_answer("4.0") == "4"
    assert normalize_answer("-3") == "-3"
    assert normalize_answer(" Yes ") == "yes"


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        ("3+4=7\nAnswer: 7", "7", 1.0),
        ("3+4=7\nAnswer: 8", "7", 0.0),
        ("Answer: 7\nAnswer: 8", "8", 1.0),  # last answer line counts
        ("the result is 7", "7", 0.0),  # no explicit answer, no credit
        ("Answer: 70", "7", 0.0),
        ("Answer: 7 apples", "7", 1.0),
    ],
)
def test_exact_reward_hand_worked(completion, answer, expected):
    assert exact_reward(completion, answer) == expected


def test_math_verify_equivalences():
    assert math_verify_reward("so \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert math_verify_reward("Answer: 12 cm", "12") == 1.0
    assert math_verify_reward("Answer: $x^2+2x$", "x(x+2)") == 1.0
    assert math_verify_reward("Answer: 13", "12") == 0.0
    assert math_verify_reward("Answer: 3", "") == 0.0


def test_format_reward_and_mixing():
    assert format_reward("1+1=2\nAnswer: 2") == 1.0
    assert format_reward("1+1=2\nAnswer: 2\nmore text") == 0.0
    assert format_reward("") == 0.0
    fn = get_reward_fn("exact", format_weight=0.1)
    assert fn("Answer: 2", "2") == pytest.approx(1.0)
    assert fn("Answer: 3", "2") == pytest.approx(0.1)
    assert fn("3", "2") == pytest.approx(0.0)


def test_registry_errors_and_batch():
    assert {"exact", "math_verify", "format"} <= set(REWARDS.names())
    with pytest.raises(ValueError, match="valid names"):
        get_reward_fn("nope")
    with pytest.raises(ValueError, match="format_weight"):
        get_reward_fn("exact", format_weight=2.0)
    with pytest.raises(TypeError, match="completion"):
        exact_reward(3, "3")
    with pytest.raises(ValueError, match="differ in length"):
        score_batch(exact_reward, ["a"], [])
    assert score_batch(exact_reward, ["Answer: 1", "Answer: 2"], ["1", "1"]) == [1.0, 0.0]


def _spin():
    while True:
        pass


def test_timeout_main_thread_signal_stops_busy_loop():
    t0 = time.perf_counter()
    value, timed_out = run_with_timeout(_spin, 0.2, -1.0)
    assert timed_out and value == -1.0
    assert time.perf_counter() - t0 < 2.0
    assert run_with_timeout(lambda: 5, 0.2, -1) == (5, False)


def test_timeout_in_worker_thread_returns_default():
    out = {}

    def worker():
        out["r"] = run_with_timeout(lambda: time.sleep(3) or 1, 0.2, 0)

    t0 = time.perf_counter()
    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert out["r"] == (0, True)
    assert time.perf_counter() - t0 < 2.0


def test_timeout_propagates_errors():
    with pytest.raises(KeyError):
        run_with_timeout(lambda: {}["x"], 0.5, 0)


def test_math_verify_pathological_input_is_cut_off(monkeypatch):
    monkeypatch.setattr(verifiers, "_math_verify_core", lambda c, a: _spin())
    before = TIMEOUTS["count"]
    t0 = time.perf_counter()
    assert math_verify_reward("Answer: 1", "1", timeout_s=0.2) == 0.0
    assert time.perf_counter() - t0 < 2.0
    assert TIMEOUTS["count"] == before + 1
