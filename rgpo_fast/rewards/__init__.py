"""Verifiable rewards: answer extraction, exact match, math-verify, format; a registry."""

from rgpo_fast.rewards.extract import extract_answer, normalize_answer
from rgpo_fast.rewards.timeout import run_with_timeout
from rgpo_fast.rewards.verifiers import (
    REWARDS,
    TIMEOUTS,
    exact_reward,
    format_reward,
    get_reward_fn,
    math_verify_reward,
    score_batch,
)

__all__ = [
    "REWARDS",
    "TIMEOUTS",
    "exact_reward",
    "extract_answer",
    "format_reward",
    "get_reward_fn",
    "math_verify_reward",
    "normalize_answer",
    "run_with_timeout",
    "score_batch",
]
