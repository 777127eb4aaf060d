"""The rollout-engine protocol: what the trainer needs from any generator.

An engine generates `n` samples per prompt from token ids and returns the sampled token
ids and the engine's own per-token log-probs (used for truncated importance sampling, see
docs/algorithms.md). Colocated engines share the devices with the trainer, so they also
release memory (`sleep`), take it back in stages (`wake_up(tags)`) and receive the
trainer's new weights (`load_weights`). The trainer calls them in this order each step:

    generate -> sleep -> (train) -> wake_up(["weights"]) -> load_weights -> wake_up(["kv_cache"])

`load_weights` resets any prefix cache itself, because cached keys/values computed with
the old weights would silently mix two policies.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy; top_p 1 disables nucleus filtering, top_k
    0 disables top-k (applied before top_p)."""

    n: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}"
            )
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")


def prompt_seed(seed: int, index: int) -> int:
    """Sampling seed of prompt `index` of a call seeded with `seed`. An engine that seeds
    each request (vLLM) must not give every prompt the same seed: sample i of every prompt
    would then share its random draws. A hash keeps the seeds distinct and reproducible."""
    return zlib.crc32(f"{seed}:{index}".encode()) & 0x7FFFFFFF


@dataclass
class Completion:
    """One generated response: token ids (stop token included if it was produced), the
    engine's log-prob of each under the temperature-scaled distribution (None when the
    generator does not report them, e.g. TRL's generation path), and why it ended ("stop"
    at an EOS/stop token, "length" at max_new_tokens)."""

    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str = "length"


@dataclass
class RequestOutput:
    """The n completions of one prompt."""

    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


def with_images(vision: Sequence[Any] | None) -> dict[str, list]:
    """`generate`'s keyword for the prompts' images: none when no prompt has any, so an
    engine written for text prompts (a user's, a test's) is called as it always was."""
    if vision is None or all(v is None for v in vision):
        return {}
    return {"vision": list(vision)}


def images_per_prompt(prompts: Sequence[list[int]], vision: Sequence[Any] | None) -> list:
    """`generate`'s `vision` as one entry per prompt (None: a text prompt); a list of
    another length is an error."""
    if vision is None:
        return [None] * len(prompts)
    if len(vision) != len(prompts):
        raise ValueError(f"vision has {len(vision)} entries for {len(prompts)} prompts")
    return list(vision)


@runtime_checkable
class RolloutEngine(Protocol):
    """Any generator the trainer can drive (hf.HFEngine, vllm_colocated.VLLMColocatedEngine)."""

    name: str

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams,
                 vision: Sequence[Any] | None = None) -> list[RequestOutput]:
        """n samples per prompt; output i belongs to prompts[i]. `vision[i]` holds prompt
        i's images (data.multimodal.VisionInputs, or None for a text prompt)."""
        ...

    def sleep(self, level: int = 2) -> None:
        """Free device memory after generation (level 2: drop weights and KV cache)."""
        ...

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-allocate memory: tags "weights" and/or "kv_cache" (None: both)."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the trainer's parameters (HF names, full tensors) into the engine."""
        ...
