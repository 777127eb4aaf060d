"""Collect one step's training samples: unguided groups, then the algorithm's guidance.

Thin glue around the pure pieces of `rgpo_fast.algos.guidance`: the engine samples,
verifiers score, and the guidance functions decide who is guided, with which hint, what
is accepted and how it is transferred back (see the step order in that module). Returns
`Rollout` records ready for `assemble_batch`, plus counters for the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rgpo_fast.algos import guidance as G
from rgpo_fast.algos.dynamic_sampling import informative_groups
from rgpo_fast.batch import Rollout
from rgpo_fast.data.prompts import encode_prompt
from rgpo_fast.data.types import Example
from rgpo_fast.rollout.base import SamplingParams


@dataclass
class StepRollouts:
    rollouts: list[Rollout]
    unguided_rewards: list[list[float]]  # (P, G) per prompt
    level_updates: dict[str, int] = field(default_factory=dict)  # uid -> new hint level
    stats: dict[str, float] = field(default_factory=dict)
    gen_tokens: int = 0


@dataclass
class RolloutContext:
    """What collection needs besides the prompts (built once by train.py)."""

    engine: object
    tokenizer: object
    algo: object  # AlgoConfig
    reward_fn: Callable[[str, str], float]
    sampling: SamplingParams
    system_prompt: str | None = None
    keep_engine_logprobs: bool = False  # True for vLLM (TIS); hf shares the trainer's weights
    max_prompt_len: int | None = None  # longest hinted prompt sent to the engine (tokens)

    def fits(self, prompt_ids: Sequence[int]) -> bool:
        """Does a (hinted) prompt fit the room the engine was sized for?"""
        return self.max_prompt_len is None or len(prompt_ids) <= self.max_prompt_len


def _decode(tok, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=True)


def _sample(ctx: RolloutContext, prompts: list[list[int]], n: int, seed: int):
    params = SamplingParams(
        n=n,
        max_new_tokens=ctx.sampling.max_new_tokens,
        temperature=ctx.sampling.temperature,
        top_p=ctx.sampling.top_p,
        seed=seed,
        stop_token_ids=ctx.sampling.stop_token_ids,
    )
    return ctx.engine.generate(prompts, params)


def unguided_groups(
    ctx: RolloutContext,
    examples: Sequence[Example],
    seed: int,
    group_offset: int = 0,
    n: int | None = None,
) -> tuple[list[Rollout], list[list[float]], int]:
    """G samples per example in the plain prompt; (rollouts, rewards per prompt, gen tokens)."""
    tok = ctx.tokenizer
    n = n or ctx.sampling.n
    prompts = [encode_prompt(tok, ex.problem, system=ctx.system_prompt) for ex in examples]
    outs = _sample(ctx, prompts, n, seed)
    rollouts, rewards, gen = [], [], 0
    for i, (ex, out) in enumerate(zip(examples, outs)):
        row = []
        for c in out.completions:
            text = _decode(tok, c.token_ids)
            r = float(ctx.reward_fn(text, ex.answer))
            row.append(r)
            gen += len(c.token_ids)
            rollouts.append(
                Rollout(
                    prompt_ids=out.prompt_ids,
                    response_ids=c.token_ids,
                    logprobs=list(c.logprobs) if ctx.keep_engine_logprobs else None,
                    text=text,
                    group=group_offset + i,
                    kind="unguided",
                    reward=r,
                    uid=ex.uid,
                )
            )
        rewards.append(row)
    return rollouts, rewards, gen


def rgpo_guidance(
    ctx: RolloutContext,
    examples: Sequence[Example],
    unguided: list[Rollout],
    rewards: list[list[float]],
    levels: G.HintLevels,
    seed: int,
) -> tuple[list[Rollout], dict[str, int], dict[str, float], int]:
    """RGPO / Guide: hint failing prompts, accept winners, transfer them back.

    Returns (transferred rollouts, uid -> new level, stats, generated tokens).
    """
    cfg, tok = ctx.algo, ctx.tokenizer
    uids = [ex.uid for ex in examples]
    cur = levels.get_many(uids)
    need = G.needs_guidance(cur, rewards, cfg, [bool(ex.rationale.strip()) for ex in examples])
    k = cfg.guided_samples(ctx.sampling.n)
    plain_prompts = {r.group: r.prompt_ids for r in unguided}
    guided_idx = [i for i, nd in enumerate(need) if nd]
    jobs = []  # (example index, prompt ids, response prefix ids, prefix mask, hint, level)
    too_long = 0
    for i in guided_idx:
        ex = examples[i]
        segs = G.segment_rationale(ex.rationale, cfg.n_segments, cfg.segmentation, tok)
        lvl = G.hint_level_used(cur[i], cfg)
        hint = G.build_hint(segs, lvl)
        if cfg.hint_placement == "prompt":
            ids = encode_prompt(
                tok, ex.problem, hint, hint_template=cfg.hint_template, system=ctx.system_prompt
            )
            pre, mask = [], []
        else:
            pre, mask = G.response_hint(tok, hint)
            ids = plain_prompts[unguided[0].group + i] + pre
        if not ctx.fits(ids):
            too_long += 1
            continue
        jobs.append((i, ids, pre, mask, hint, lvl))
    transferred: list[Rollout] = []
    accepted_by_prompt: dict[int, list[bool]] = {}
    gen = n_guided_ok = 0
    if jobs:
        outs = _sample(ctx, [j[1] for j in jobs], k, seed + 7919)
        for (i, ids, pre, pmask, hint, lvl), out in zip(jobs, outs):
            ex, group = examples[i], unguided[0].group + i
            g_rollouts, g_rewards = [], []
            for c in out.completions:
                gen += len(c.token_ids)
                text = _decode(tok, pre + c.token_ids) if pre else _decode(tok, c.token_ids)
                r = float(ctx.reward_fn(text, ex.answer))
                n_guided_ok += r >= cfg.success_threshold
                g_rewards.append(r)
                g_rollouts.append(
                    Rollout(
                        prompt_ids=ids[: len(ids) - len(pre)] if pre else ids,
                        response_ids=pre + c.token_ids,
                        logprobs=None,
                        text=text,
                        group=group,
                        kind="guided",
                        reward=r,
                        hint_level=lvl,
                        uid=ex.uid,
                        hint_mask=(pmask + [False] * len(c.token_ids)) if pre else None,
                    )
                )
                if cfg.transfer == "is" and not pre:
                    g_rollouts[-1].logprobs = list(c.logprobs)
            ok = G.accept(g_rewards, rewards[i], cfg.acceptance, cfg.success_threshold)
            accepted_by_prompt[i] = ok
            for roll, good in zip(g_rollouts, ok):
                if good:
                    transferred.append(
                        G.transfer_back(
                            roll,
                            plain_prompts[group],
                            tok,
                            cfg,
                            hint_text=hint if cfg.hint_placement == "response" else None,
                        )
                    )
    updates: dict[str, int] = {}
    for i, ex in enumerate(examples):
        solved, failed = G.step_outcome(
            rewards[i], accepted_by_prompt.get(i), cfg.success_threshold
        )
        new = G.update_level(
            cur[i],
            solved=solved,
            guided_failed=failed,
            n_segments=cfg.n_segments,
            adaptive=cfg.adaptive_levels,
        )
        if new != cur[i]:
            updates[ex.uid] = new
    stats = {
        "guided/prompts": float(len(jobs)),
        "guided/samples": float(len(jobs) * k),
        "guided/successes": float(n_guided_ok),
        "guided/accepted": float(len(transferred)),
        "guided/accepted_prompts": float(sum(any(v) for v in accepted_by_prompt.values())),
        "guided/mean_level": (sum(j[5] for j in jobs) / len(jobs)) if jobs else 0.0,
        "guided/too_long": float(too_long),
    }
    return transferred, updates, stats, gen


def ghpo_guidance(
    ctx: RolloutContext,
    examples: Sequence[Example],
    unguided: list[Rollout],
    rewards: list[list[float]],
    seed: int,
):
    """GHPO: an all-failed group is regenerated with omega-hints (in the user message) and
    replaces the failed group; it is trained in the hinted context."""
    cfg, tok = ctx.algo, ctx.tokenizer
    groups = {
        i: [r for r in unguided if r.group == unguided[0].group + i] for i in range(len(examples))
    }
    cur_rewards = [list(r) for r in rewards]
    stages: list[int | None] = [None] * len(examples)
    has = [bool(ex.rationale.strip()) for ex in examples]
    gen = guided = too_long = 0
    for rnd in range(len(cfg.ghpo_omegas)):
        nxt = G.ghpo_escalate(cur_rewards, stages, cfg, has)
        todo, prompts = [], []
        for i in (i for i, s in enumerate(nxt) if s is not None):
            ids = encode_prompt(
                tok,
                examples[i].problem,
                G.ghpo_hint(examples[i].rationale, cfg.ghpo_omegas[nxt[i]]),
                hint_template=cfg.hint_template,
                system=ctx.system_prompt,
            )
            if ctx.fits(ids):
                todo.append(i)
                prompts.append(ids)
            else:  # this and longer hints do not fit: the group stays as it is
                too_long += 1
                has[i] = False
        if not todo:
            break
        outs = _sample(ctx, prompts, ctx.sampling.n, seed + 104729 * (rnd + 1))
        for i, out in zip(todo, outs):
            stages[i] = nxt[i]
            guided += 1
            new, row = [], []
            for c in out.completions:
                gen += len(c.token_ids)
                text = _decode(tok, c.token_ids)
                r = float(ctx.reward_fn(text, examples[i].answer))
                row.append(r)
                new.append(
                    Rollout(
                        prompt_ids=out.prompt_ids,
                        response_ids=c.token_ids,
                        text=text,
                        group=groups[i][0].group,
                        kind="guided",
                        reward=r,
                        uid=examples[i].uid,
                        hint_level=nxt[i] + 1,
                    )
                )
            groups[i], cur_rewards[i] = new, row
    rollouts = [r for i in range(len(examples)) for r in groups[i]]
    stats = {"guided/prompts": float(guided), "guided/accepted": 0.0,
             "guided/too_long": float(too_long)}
    return rollouts, stats, gen


def luffy_groups(ctx: RolloutContext, examples: Sequence[Example], seed: int, group_offset: int):
    """LUFFY: G - s on-policy samples plus the reference rationale in s off-policy slots."""
    cfg, tok = ctx.algo, ctx.tokenizer
    slots = min(cfg.luffy_offpolicy_slots, ctx.sampling.n - 1)
    rollouts, rewards, gen = unguided_groups(
        ctx, examples, seed, group_offset, n=ctx.sampling.n - slots
    )
    for i, ex in enumerate(examples):
        if not ex.rationale.strip() or slots < 1:
            continue
        prompt = next(r.prompt_ids for r in rollouts if r.group == group_offset + i)
        r = float(ctx.reward_fn(ex.rationale, ex.answer))
        for _ in range(slots):
            rollouts.append(
                G.luffy_offpolicy_rollout(
                    prompt, ex.rationale, tok, group=group_offset + i, reward=r, uid=ex.uid
                )
            )
    return rollouts, rewards, gen


def collect(
    ctx: RolloutContext,
    examples: Sequence[Example],
    levels: G.HintLevels,
    seed: int,
    refill: Callable[[], list[Example]] | None = None,
) -> StepRollouts:
    """All training samples of one step for `ctx.algo` (see module docstring)."""
    cfg = ctx.algo
    if cfg.guidance == "luffy":
        rollouts, rewards, gen = luffy_groups(ctx, examples, seed, 0)
    else:
        rollouts, rewards, gen = unguided_groups(ctx, examples, seed)
    stats = {"guided/prompts": 0.0, "guided/accepted": 0.0}
    examples = list(examples)
    if cfg.dynamic_sampling:
        rollouts, rewards, examples, gen, ds = _dynamic(
            ctx, examples, rollouts, rewards, seed, refill, gen
        )
        stats.update(ds)
    out = StepRollouts(rollouts=list(rollouts), unguided_rewards=rewards)
    if cfg.guidance == "rgpo":
        transferred, updates, gstats, g_gen = rgpo_guidance(
            ctx, examples, rollouts, rewards, levels, seed
        )
        out.rollouts += transferred
        out.level_updates = updates
        stats.update(gstats)
        gen += g_gen
    elif cfg.guidance == "ghpo":
        out.rollouts, gstats, g_gen = ghpo_guidance(ctx, examples, rollouts, rewards, seed)
        stats.update(gstats)
        gen += g_gen
    out.stats, out.gen_tokens = stats, gen
    return out


def _dynamic(ctx, examples, rollouts, rewards, seed, refill, gen):
    """DAPO: keep informative groups, refill from new prompts for up to max_extra_rounds."""
    target = len(examples)
    keep = informative_groups(rewards)
    kept = [
        (ex, [r for r in rollouts if r.group == i], rw)
        for i, (ex, rw, k) in enumerate(zip(examples, rewards, keep))
        if k
    ]
    dropped, rounds = sum(not k for k in keep), 0
    while len(kept) < target and refill is not None and rounds < ctx.algo.max_extra_rounds:
        rounds += 1
        extra = refill()
        if not extra:
            break
        r2, rw2, g2 = unguided_groups(ctx, extra, seed + 31 * rounds)
        gen += g2
        for i, (ex, rw) in enumerate(zip(extra, rw2)):
            if informative_groups([rw])[0]:
                kept.append((ex, [r for r in r2 if r.group == i], rw))
            else:
                dropped += 1
    kept = kept[:target]
    stats = {"dynamic/dropped": float(dropped), "dynamic/rounds": float(rounds)}
    if not kept:  # nothing informative: train on the original batch (zero advantages)
        return rollouts, rewards, examples, gen, stats
    new_rollouts, new_rewards, new_examples = [], [], []
    for gi, (ex, rs, rw) in enumerate(kept):
        for r in rs:
            r.group = gi
            new_rollouts.append(r)
        new_rewards.append(rw)
        new_examples.append(ex)
    return new_rollouts, new_rewards, new_examples, gen, stats
