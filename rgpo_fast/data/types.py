"""The records the data flows through: `Example` (a problem, from a reader or the built-in
task) and `Sample` (one response to a prompt, from the rollout engine or a reference)."""

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
    state such as hint levels can be keyed by it. `images` (PIL images, decoded once when
    the data is read) are shown before the problem (data/multimodal.py).
    """

    problem: str
    answer: str
    rationale: str = ""
    uid: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    images: tuple = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "rationale": self.rationale,
            "answer": self.answer,
            "uid": self.uid,
            "meta": dict(self.meta),
        }


# Where a sample comes from; TrainBatch stores them as int8 codes (rgpo_fast/batch.py).
SAMPLE_KINDS = ("unguided", "guided", "transferred", "offpolicy", "sft")


@dataclass
class Sample:
    """One response to one prompt: sampled by the rollout engine, or a reference.

    kind: "unguided" (sampled from the plain prompt), "guided" (sampled with a hint; RGPO
    transfers accepted ones back, GHPO trains them where they are), "transferred" (an
    accepted guided response moved to the hint-free prompt), "offpolicy" (LUFFY's
    reference rationale in a group slot), "sft" (a reference rationale trained by NLL
    alone, outside any group: the SFT warm start's rows).

    `group` is the index of the prompt within the step (samples of one prompt share it).
    `rollout_logprobs` are the log-probs of `response_ids` under the distribution that
    produced them (the engine's; for an `is` transfer the hinted-context ones), one per
    response token, or None; `rollout_prompt_ids` is the prompt they were computed under
    when it differs from `prompt_ids` (an `is` transfer), so the trainer can recompute them.
    `hint_mask` marks response tokens copied from a rationale (response placement).
    `vision` holds the prompt's processed images (data.multimodal.VisionInputs, shared by
    every sample of the prompt), None for a text prompt.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float] | None = None
    text: str = ""
    group: int = 0
    kind: str = "unguided"
    reward: float | None = None
    hint_mask: list[bool] | None = None
    hint_level: int = 0
    uid: str = ""
    rollout_prompt_ids: list[int] | None = None
    vision: Any = None

    def __post_init__(self) -> None:
        if self.kind not in SAMPLE_KINDS:
            raise ValueError(
                f"Sample.kind={self.kind!r} is invalid; valid: {', '.join(SAMPLE_KINDS)}"
            )
        n = len(self.response_ids)
        if self.rollout_logprobs is not None and len(self.rollout_logprobs) != n:
            raise ValueError(f"Sample.rollout_logprobs has {len(self.rollout_logprobs)} "
                             f"entries for {n} response tokens")  # fmt: skip
        if self.hint_mask is not None and len(self.hint_mask) != n:
            raise ValueError(
                f"Sample.hint_mask has {len(self.hint_mask)} entries for {n} response tokens"
            )
        if not self.prompt_ids:
            raise ValueError("Sample.prompt_ids is empty (the first target needs a context)")
