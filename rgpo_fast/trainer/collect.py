"""Collect one step's training samples: unguided groups -> dynamic sampling -> guidance.

Thin glue between the rollout engine, the verifier and the algorithm's guidance mode
(rgpo_fast/guidance_modes.py, `GUIDANCE[algo.guidance]`): the mode says how many unguided
samples a prompt gets and may complete each fresh group; DAPO's dynamic sampling
(`algos.dynamic_sampling`) filters and refills the groups; the mode's guidance runs on the
kept ones. Returns `Sample` records ready for `assemble_batch`, the hint-level updates and
counters for the metrics. No mode is named here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rgpo_fast.algos import guidance
from rgpo_fast.algos.dynamic_sampling import dynamic_sampling
from rgpo_fast.algos.presets import AlgoConfig
from rgpo_fast.data.multimodal import PromptEncoder, VisionInputs
from rgpo_fast.data.types import Example, Sample
from rgpo_fast.guidance_modes import GUIDANCE
from rgpo_fast.guided_round import Callbacks, PromptGroup
from rgpo_fast.rewards.contract import score
from rgpo_fast.rollout.base import RolloutEngine, SamplingParams, with_images

# Seed offset of dynamic sampling's refill round r (times r); guidance_modes.py and
# guided_round.py hold the offsets of the guided calls.
REFILL_SEED_OFFSET = 31


@dataclass
class StepSamples:
    """Everything one step collected."""

    samples: list[Sample]
    unguided_rewards: list[list[float]]  # (P, G) per prompt
    level_updates: dict[str, int] = field(default_factory=dict)  # uid -> new hint level
    stats: dict[str, float] = field(default_factory=dict)
    generated_tokens: int = 0


@dataclass
class CollectContext:
    """What collection needs besides the prompts (built once by the trainer)."""

    engine: RolloutEngine
    tokenizer: object  # a Hugging Face tokenizer
    algo: AlgoConfig
    reward_fn: Callable[[str, str], float]  # the trainer's: a CheckedReward (rewards/contract.py)
    sampling: SamplingParams
    system_prompt: str | None = None
    keep_rollout_logprobs: bool = False  # True for vLLM (TIS); hf shares the trainer's weights
    max_prompt_len: int | None = None  # longest hinted prompt sent to the engine (tokens)
    processor: object = None  # a vision-language model's processor (None: text only)

    def prompts(self) -> PromptEncoder:
        return PromptEncoder(self.tokenizer, self.processor, system=self.system_prompt,
                             hint_template=self.algo.hint_template)


def _decode(tok, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=True)


def generate(ctx: CollectContext, prompts: list[list[int]], n: int, seed: int,
             vision: Sequence[VisionInputs | None] | None = None):
    """n completions per prompt from the engine: list (per prompt) of lists of Completion.
    `vision[i]`: prompt i's images (text prompts: None, or no list at all)."""
    params = SamplingParams(
        n=n,
        max_new_tokens=ctx.sampling.max_new_tokens,
        temperature=ctx.sampling.temperature,
        top_p=ctx.sampling.top_p,
        top_k=ctx.sampling.top_k,
        seed=seed,
        stop_token_ids=ctx.sampling.stop_token_ids,
    )
    return [out.completions for out in ctx.engine.generate(prompts, params, **with_images(vision))]


def score_groups(ctx: CollectContext, groups: Sequence[PromptGroup],
                 samples: list[list[Sample]]) -> list[list[float]]:  # fmt: skip
    """Each sample's reward against its group's hint-free problem (the reward contract names
    the sample in its errors)."""
    return [[score(ctx.reward_fn, s.text, g.answer, f"{s.kind} sample {k} of problem {g.uid}")
             for k, s in enumerate(row)] for g, row in zip(groups, samples)]  # fmt: skip


def callbacks(ctx: CollectContext, seed: int) -> Callbacks:
    """The engine, the verifier and the prompt template as a guidance mode's callbacks."""
    encoder = ctx.prompts()

    def hinted_prompt(group: PromptGroup, hint: str) -> list[int]:
        return encoder.encode(group.problem, hint, group.vision)

    def sample(prompts, k, offset, vision=None):
        return generate(ctx, prompts, k, seed + offset, vision)

    return Callbacks(tokenizer=ctx.tokenizer, group_size=ctx.sampling.n,
                     hinted_prompt=hinted_prompt, generate=sample,
                     score=lambda groups, samples: score_groups(ctx, groups, samples),
                     max_prompt_len=ctx.max_prompt_len)  # fmt: skip


def unguided_groups(ctx: CollectContext, examples: Sequence[Example], seed: int,
                    n: int) -> list[PromptGroup]:  # fmt: skip
    """n samples per example from the plain prompt, scored: one PromptGroup each. An
    example's images are processed here, once for all its prompts and samples."""
    tok, encoder = ctx.tokenizer, ctx.prompts()
    vision = [encoder.vision(ex.images, f"problem {ex.uid}") for ex in examples]
    prompts = [encoder.encode(ex.problem, vision=v) for ex, v in zip(examples, vision)]
    out = []
    for ex, prompt, v, comps in zip(examples, prompts, vision,
                                    generate(ctx, prompts, n, seed, vision)):
        samples = [Sample(prompt_ids=list(prompt), response_ids=list(c.token_ids),
                          rollout_logprobs=list(c.logprobs) if ctx.keep_rollout_logprobs
                          else None, text=_decode(tok, c.token_ids), kind="unguided",
                          uid=ex.uid, vision=v) for c in comps]  # fmt: skip
        group = PromptGroup(uid=ex.uid, rationale=ex.rationale, prompt_ids=list(prompt),
                            rewards=[], group=0, samples=samples, problem=ex.problem,
                            answer=ex.answer, vision=v)  # fmt: skip
        group.rewards = score_groups(ctx, [group], [samples])[0]
        for s, r in zip(samples, group.rewards):
            s.reward = r
        out.append(group)
    return out


def _generated(groups: Sequence[PromptGroup]) -> int:
    return sum(len(s.response_ids) for g in groups for s in g.samples if s.kind == "unguided")


def collect(
    ctx: CollectContext,
    examples: Sequence[Example],
    levels: guidance.HintLevels,
    seed: int,
    refill: Callable[[], list[Example]] | None = None,
) -> StepSamples:
    """All training samples of one step for `ctx.algo` (see module docstring)."""
    cfg = ctx.algo
    mode = GUIDANCE.get(cfg.guidance)
    io = callbacks(ctx, seed)
    n = mode.on_policy(cfg, ctx.sampling.n)

    def fresh(batch: Sequence[Example], round_seed: int) -> list[PromptGroup]:
        groups = unguided_groups(ctx, batch, round_seed, n)
        mode.complete(groups, cfg, io)
        return groups

    stats = {"guided/prompts": 0.0, "guided/accepted": 0.0}
    first = fresh(examples, seed)
    generated = _generated(first)
    groups = first
    if cfg.dynamic_sampling:
        drawn = {0: first}

        def round_groups(rnd: int) -> list[PromptGroup]:
            if rnd not in drawn:
                extra = refill() if refill is not None else []
                drawn[rnd] = fresh(extra, seed + REFILL_SEED_OFFSET * rnd) if extra else []
            return drawn[rnd]

        groups, ds = dynamic_sampling(round_groups, lambda g: g.rewards, len(first),
                                      cfg.max_extra_rounds)  # fmt: skip
        generated = sum(_generated(d) for d in drawn.values())
        stats.update({"dynamic/dropped": float(ds["dropped"]),
                      "dynamic/rounds": float(ds["rounds"] - 1)})  # fmt: skip
    for i, g in enumerate(groups):  # group ids index the step's prompts, once
        g.group = i
        for s in g.samples:
            s.group = i
    unguided = [list(g.rewards) for g in groups]
    result = mode.guide(groups, levels, cfg, io)
    for s in result.samples:  # guided, transferred and reference rows show their prompt's images
        s.vision = groups[s.group].vision
    stats.update(result.stats)
    return StepSamples(samples=result.samples, unguided_rewards=unguided,
                       level_updates=result.level_updates, stats=stats,
                       generated_tokens=generated + result.generated_tokens)  # fmt: skip
