"""The one record every reader and the built-in task produce."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """A training or evaluation problem.

    `problem` is the user-facing question (no template applied), `rationale` a worked
    solution used only as a hint source (may be empty: the prompt is then never guided),
    `answer` the reference final answer the verifier compares against. `uid` is stable
    across runs (readers: "<file>:<row>", arith: a hash of the problem) so that per-prompt
    state such as hint levels can be keyed by it.
    """

    problem: str
    answer: str
    rationale: str = ""
    uid: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "rationale": self.rationale,
            "answer": self.answer,
            "uid": self.uid,
            "meta": dict(self.meta),
        }
