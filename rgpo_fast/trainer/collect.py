"""Collect one step's training samples: unguided groups, then the algorithm's guidance.

Thin glue between the rollout engine, the verifier and the algorithm: unguided groups of
G samples per prompt (LUFFY: G - s samples plus the reference in s slots), DAPO's dynamic
sampling (`algos.dynamic_sampling`), then RGPO's guided round (`rgpo_fast.guided_round`)
or GHPO's in-step regeneration. Returns `Sample` records ready for `assemble_batch`, the
hint-level updates and counters for the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rgpo_fast.algos import guidance
from rgpo_fast.algos.dynamic_sampling import dynamic_sampling
from rgpo_fast.data.prompts import encode_prompt, encode_text
from rgpo_fast.data.types import Example, Sample
from rgpo_fast.guided_round import GuidedJob, PromptGroup, guided_round
from rgpo_fast.rewards.contract import score
from rgpo_fast.rollout.base import Completion, SamplingParams

# Offsets of the sampling seeds of a step's generation calls (guided round, GHPO rounds,
# dynamic-sampling refills): distinct calls never reuse a seed.
GUIDED_SEED_OFFSET = 7919
GHPO_SEED_OFFSET = 104729
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

    engine: object
    tokenizer: object
    algo: object  # AlgoConfig
    reward_fn: Callable[[str, str], float]  # the trainer's: a CheckedReward (rewards/contract.py)
    sampling: SamplingParams
    system_prompt: str | None = None
    keep_rollout_logprobs: bool = False  # True for vLLM (TIS); hf shares the trainer's weights
    max_prompt_len: int | None = None  # longest hinted prompt sent to the engine (tokens)


@dataclass
class Group:
    """One prompt and its G samples (the unit dynamic sampling keeps or drops)."""

    example: Example
    samples: list[Sample]
    rewards: list[float]


def _decode(tok, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=True)


def generate(ctx: CollectContext, prompts: list[list[int]], n: int, seed: int):
    """n completions per prompt from the engine: list (per prompt) of lists of Completion."""
    params = SamplingParams(
        n=n,
        max_new_tokens=ctx.sampling.max_new_tokens,
        temperature=ctx.sampling.temperature,
        top_p=ctx.sampling.top_p,
        seed=seed,
        stop_token_ids=ctx.sampling.stop_token_ids,
    )
    return [out.completions for out in ctx.engine.generate(prompts, params)]


def unguided_groups(ctx: CollectContext, examples: Sequence[Example], seed: int,
                    n: int | None = None) -> list[Group]:  # fmt: skip
    """n (default G) samples per example from the plain prompt, scored."""
    tok = ctx.tokenizer
    prompts = [encode_prompt(tok, ex.problem, system=ctx.system_prompt) for ex in examples]
    out = []
    for ex, prompt, comps in zip(examples, prompts, generate(ctx, prompts, n or ctx.sampling.n,
                                                             seed)):  # fmt: skip
        samples, rewards = [], []
        for k, c in enumerate(comps):
            text = _decode(tok, c.token_ids)
            r = score(ctx.reward_fn, text, ex.answer, f"sample {k} of problem {ex.uid}")
            rewards.append(r)
            samples.append(Sample(
                prompt_ids=list(prompt), response_ids=list(c.token_ids),
                rollout_logprobs=list(c.logprobs) if ctx.keep_rollout_logprobs else None,
                text=text, kind="unguided", reward=r, uid=ex.uid,
            ))  # fmt: skip
        out.append(Group(ex, samples, rewards))
    return out


def luffy_groups(ctx: CollectContext, examples: Sequence[Example], seed: int) -> list[Group]:
    """LUFFY: G - s on-policy samples plus the reference rationale in s off-policy slots."""
    slots = min(ctx.algo.luffy_offpolicy_slots, ctx.sampling.n - 1)
    groups = unguided_groups(ctx, examples, seed, n=ctx.sampling.n - slots)
    for g in groups:
        if not g.example.rationale.strip() or slots < 1:
            continue
        r = score(ctx.reward_fn, g.example.rationale, g.example.answer,
                  f"the reference of problem {g.example.uid}")
        for _ in range(slots):
            g.samples.append(reference_sample(g.samples[0].prompt_ids, g.example.rationale,
                                              ctx.tokenizer, reward=r, uid=g.example.uid))
    return groups


def reference_sample(prompt_ids: Sequence[int], rationale: str, tokenizer, *,
                     reward: float | None = None, uid: str = "", add_eos: bool = True) -> Sample:
    """The reference rationale as an off-policy response (LUFFY's slot). Its tokens get the
    shaped ratio f = p / (p + gamma) in the loss (offpolicy_mask); no rollout log-probs."""
    if not rationale:
        raise ValueError("reference_sample needs a non-empty rationale")
    ids = encode_text(tokenizer, rationale)
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        ids.append(eos)
    return Sample(prompt_ids=list(prompt_ids), response_ids=ids, text=rationale,
                  kind="offpolicy", reward=reward, uid=uid)  # fmt: skip


def rgpo_round(ctx: CollectContext, groups: list[Group], levels: guidance.HintLevels,
               seed: int):  # fmt: skip
    """RGPO / Guide: the guided round on this step's groups, sampled by the engine and
    scored by the verifier."""
    tok = ctx.tokenizer
    prompt_groups = [PromptGroup(uid=g.example.uid, rationale=g.example.rationale,
                                 prompt_ids=g.samples[0].prompt_ids, rewards=g.rewards, group=i)
                     for i, g in enumerate(groups)]  # fmt: skip

    def hinted_prompt(i: int, hint: str) -> list[int]:
        return encode_prompt(tok, groups[i].example.problem, hint,
                             hint_template=ctx.algo.hint_template, system=ctx.system_prompt)

    def score_jobs(jobs: list[GuidedJob], samples: list[list[Sample]]) -> list[list[float]]:
        return [[score(ctx.reward_fn, s.text, groups[j.index].example.answer,
                       f"guided sample {k} of problem {s.uid}") for k, s in enumerate(row)]
                for j, row in zip(jobs, samples)]  # fmt: skip

    def sample(prompts: list[list[int]], k: int) -> list[list[Completion]]:
        return generate(ctx, prompts, k, seed + GUIDED_SEED_OFFSET)

    return guided_round(prompt_groups, levels, ctx.algo, tok, group_size=ctx.sampling.n,
                        hinted_prompt=hinted_prompt, generate=sample, score=score_jobs,
                        max_prompt_len=ctx.max_prompt_len)  # fmt: skip


def ghpo_regroup(ctx: CollectContext, groups: list[Group], seed: int) -> tuple[dict, int]:
    """GHPO: an all-failed group is regenerated with omega-hints (in the user message) and
    replaces the failed group in place; it is trained in the hinted context. Returns
    (stats, generated tokens)."""
    cfg, tok = ctx.algo, ctx.tokenizer
    stages: list[int | None] = [None] * len(groups)
    has = [bool(g.example.rationale.strip()) for g in groups]
    generated = guided = too_long = 0
    for rnd in range(len(cfg.ghpo_omegas)):
        nxt = guidance.ghpo_escalate([g.rewards for g in groups], stages, cfg, has)
        todo, prompts = [], []
        for i in (i for i, s in enumerate(nxt) if s is not None):
            ex = groups[i].example
            ids = encode_prompt(tok, ex.problem, guidance.ghpo_hint(ex.rationale,
                                                                     cfg.ghpo_omegas[nxt[i]]),
                                hint_template=cfg.hint_template, system=ctx.system_prompt)
            if ctx.max_prompt_len is None or len(ids) <= ctx.max_prompt_len:
                todo.append(i)
                prompts.append(ids)
            else:  # this and longer hints do not fit: the group stays as it is
                too_long += 1
                has[i] = False
        if not todo:
            break
        comps_per = generate(ctx, prompts, ctx.sampling.n, seed + GHPO_SEED_OFFSET * (rnd + 1))
        for i, prompt, comps in zip(todo, prompts, comps_per):
            stages[i] = nxt[i]
            guided += 1
            ex, samples, rewards = groups[i].example, [], []
            for k, c in enumerate(comps):
                generated += len(c.token_ids)
                text = _decode(tok, c.token_ids)
                r = score(ctx.reward_fn, text, ex.answer, f"hinted sample {k} of problem {ex.uid}")
                rewards.append(r)
                samples.append(Sample(prompt_ids=list(prompt), response_ids=list(c.token_ids),
                                      text=text, kind="guided", reward=r, uid=ex.uid,
                                      hint_level=nxt[i] + 1))  # fmt: skip
            groups[i] = Group(ex, samples, rewards)
    stats = {"guided/prompts": float(guided), "guided/accepted": 0.0,
             "guided/too_long": float(too_long)}  # fmt: skip
    return stats, generated


def _generated(groups: Sequence[Group]) -> int:
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
    build = luffy_groups if cfg.guidance == "luffy" else unguided_groups
    stats = {"guided/prompts": 0.0, "guided/accepted": 0.0}
    first = build(ctx, examples, seed)
    generated = _generated(first)
    if cfg.dynamic_sampling:
        drawn = {0: first}

        def round_groups(rnd: int) -> list[Group]:
            if rnd not in drawn:
                extra = refill() if refill is not None else []
                drawn[rnd] = build(ctx, extra, seed + REFILL_SEED_OFFSET * rnd) if extra else []
            return drawn[rnd]

        groups, ds = dynamic_sampling(round_groups, lambda g: g.rewards, len(first),
                                      cfg.max_extra_rounds)  # fmt: skip
        generated = sum(_generated(d) for d in drawn.values())
        stats.update({"dynamic/dropped": float(ds["dropped"]),
                      "dynamic/rounds": float(ds["rounds"] - 1)})  # fmt: skip
    else:
        groups = first
    for i, g in enumerate(groups):  # group ids index the step's prompts
        for s in g.samples:
            s.group = i
    out = StepSamples(samples=[], unguided_rewards=[list(g.rewards) for g in groups])
    if cfg.guidance == "rgpo":
        rnd = rgpo_round(ctx, groups, levels, seed)
        out.level_updates = rnd.level_updates
        stats.update(rnd.stats)
        generated += rnd.generated_tokens
        out.samples = [s for g in groups for s in g.samples] + rnd.transferred
    elif cfg.guidance == "ghpo":
        gstats, g_gen = ghpo_regroup(ctx, groups, seed)
        for i, g in enumerate(groups):
            for s in g.samples:
                s.group = i
        stats.update(gstats)
        generated += g_gen
        out.samples = [s for g in groups for s in g.samples]
    else:
        out.samples = [s for g in groups for s in g.samples]
    out.stats, out.generated_tokens = stats, generated
    return out
