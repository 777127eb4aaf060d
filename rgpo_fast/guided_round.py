"""RGPO's guided round, in one function used by the trainer and the TRL adapter alike.

When on-policy samples fail on a prompt, the model is shown part of the prompt's reference
rationale, writes its own solutions, and only those that beat every unguided sample are
moved back to the hint-free prompt and trained there (docs/algorithms.md, "RGPO"):

    round = guided_round(groups, levels, algo, Callbacks(tokenizer, G, hinted_prompt=...,
                                                         generate=..., score=...))

1. trigger    which prompts are guided this step (`guidance.needs_guidance`)
2. hint       the first max(level, 1) rationale segments (the rationale's own steps by
              default; never all of them), in the user message (prompt placement,
              `hinted_prompt`) or as the start of the response (response placement: its
              tokens are hint-masked)
3. generate   K guided responses per hinted prompt (`generate`, the caller's sampler)
4. score      their rewards against the hint-free problem (`score`, the caller's verifier)
5. accept     those whose reward beats every unguided reward (`guidance.accept`); with
              `hint_escalation` "round" a prompt with none accepted goes back to 2 at the
              next level, in the same step
6. transfer   accepted responses re-tokenised after the hint-free prompt (`transfer_back`);
              copies of the reference follow `cfg.copies` (`guidance.transfer_copies`)
7. levels     each prompt's next level: one below the level that solved it, one above the
              last that failed (`guidance.step_outcome`, `guidance.update_level`);
              returned as updates, applied by the caller

The pure decisions live in algos/guidance.py; this module adds the tokenizer and the
records. The caller owns sampling and scoring (`Callbacks`), so the same round runs on the
trainer's rollout engine and on TRL's generation path. Every guidance mode
(rgpo_fast/guidance_modes.py) takes the same `PromptGroup` records and `Callbacks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rgpo_fast.algos import guidance
from rgpo_fast.data.prompts import token_starts
from rgpo_fast.data.types import Sample
from rgpo_fast.rollout.base import Completion

# Sampling seed offset of a step's guided call r (times r + 1; the caller adds its step
# seed): distinct calls never reuse a seed.
GUIDED_SEED_OFFSET = 7919


@dataclass
class PromptGroup:
    """One prompt of the step with its unguided group: what every guidance mode starts
    from (the trainer builds them from its engine's samples, the TRL adapter from TRL's)."""

    uid: str  # key of the prompt's hint level
    rationale: str  # reference rationale ("" = never guided)
    prompt_ids: list[int]  # the hint-free prompt
    rewards: list[float]  # rewards of its on-policy unguided samples
    group: int  # group index its samples share in the step's batch
    samples: list[Sample] = field(default_factory=list)  # what the step trains of this prompt
    problem: str = ""  # the question, for the caller's prompt template
    answer: str = ""  # the reference answer, for the caller's scorer
    vision: Any = None  # the prompt's images (data.multimodal.VisionInputs): every hinted
    # prompt of the group shows them too


@dataclass
class GuidedJob:
    """One hinted prompt to sample from."""

    index: int  # position of the prompt in the round's `groups`
    prompt_ids: list[int]  # what the sampler continues: hinted prompt, or prompt + hint ids
    hint: str  # the rationale prefix shown
    level: int  # number of segments shown
    prefix_ids: list[int] = field(default_factory=list)  # response placement: the hint ids


@dataclass
class GuidedRound:
    """What one guided round produced."""

    transferred: list[Sample]  # accepted responses under their hint-free prompts
    level_updates: dict[str, int]  # uid -> new hint level (only the ones that changed)
    stats: dict[str, float]  # guided/* metrics of the step
    generated_tokens: int = 0


HintedPrompt = Callable[[PromptGroup, str], list[int]]  # (group, hint) -> hinted prompt ids
# (prompts, K, seed offset, each prompt's images or None) -> K completions each; the offset
# tells the calls of a step apart
Generate = Callable[[list[list[int]], int, int, list[Any]], list[list[Completion]]]
# (groups, their samples) -> each sample's reward against its group's hint-free problem
Score = Callable[[list[PromptGroup], list[list[Sample]]], list[list[float]]]


@dataclass
class Callbacks:
    """What a guidance mode asks of its caller: the tokenizer, the group size G, the hinted
    prompt (prompt placement, GHPO), sampling, scoring, and the longest prompt the sampler
    takes (None: no limit)."""

    tokenizer: Any
    group_size: int
    hinted_prompt: HintedPrompt | None
    generate: Generate
    score: Score
    max_prompt_len: int | None = None


def guided_round(groups: Sequence[PromptGroup], levels: guidance.HintLevels, cfg: Any,
                 io: Callbacks) -> GuidedRound:  # fmt: skip
    """Run steps 1-7 of the module docstring for `cfg` (an AlgoConfig with guidance "rgpo").

    With `cfg.hint_escalation` "round" a prompt whose guided samples were not accepted (and
    whose unguided group did not succeed) is sampled again at the next level in the same
    step, until one is accepted or its last partial level failed; "visit" tries one level
    per step. A hinted prompt longer than `io.max_prompt_len` tokens is not guided (counted
    in `guided/too_long`): the engine was sized for prompts up to that length. A rationale
    of one segment has no partial hint and is not guided either (`guided/unhintable`).
    """
    tokenizer = io.tokenizer
    current = levels.get_many([g.uid for g in groups])
    need = guidance.needs_guidance(current, [g.rewards for g in groups], cfg,
                                   [bool(g.rationale.strip()) for g in groups])  # fmt: skip
    segments = {i: rationale_segments(groups[i].rationale, cfg, tokenizer)
                for i, n in enumerate(need) if n}  # fmt: skip
    ceiling = {i: guidance.max_hint_level(len(segs), cfg.adaptive_levels)
               for i, segs in segments.items()}  # fmt: skip
    todo = {i: guidance.hint_level_used(current[i], ceiling[i], cfg.adaptive_levels)
            for i in segments if ceiling[i] >= 1}  # fmt: skip
    unhintable = len(segments) - len(todo)

    k = cfg.guided_samples(io.group_size)
    shown: dict[int, int] = {}  # prompt -> deepest level tried
    accepted: dict[int, list[bool]] = {}  # prompt -> acceptance of its last level's samples
    transferred: list[Sample] = []
    too_long = successes = n_accepted = copies = generated = samples = 0
    rnd = 0
    while todo:
        jobs = []
        for i, level in sorted(todo.items()):
            job = _hint_job(i, groups[i], segments[i], level, cfg, tokenizer, io.hinted_prompt)
            if io.max_prompt_len is not None and len(job.prompt_ids) > io.max_prompt_len:
                too_long += 1  # this level and the longer ones do not fit
                continue
            jobs.append(job)
        if not jobs:
            break
        completions = io.generate([j.prompt_ids for j in jobs], k, GUIDED_SEED_OFFSET * (rnd + 1),
                                  [groups[j.index].vision for j in jobs])  # fmt: skip
        generated += sum(len(c.token_ids) for comps in completions for c in comps)
        guided = [[_guided_sample(j, groups[j.index], c, cfg, tokenizer) for c in comps]
                  for j, comps in zip(jobs, completions)]  # fmt: skip
        rewards = io.score([groups[j.index] for j in jobs], guided)
        todo = {}
        for job, batch, rws in zip(jobs, guided, rewards):
            group = groups[job.index]
            samples += len(batch)
            ok = guidance.accept(rws, group.rewards, cfg.acceptance, cfg.success_threshold)
            shown[job.index], accepted[job.index] = job.level, ok
            successes += sum(r >= cfg.success_threshold for r in rws)
            copy = [guidance.is_copy(s.text, group.rationale) for s in batch]
            n_accepted += sum(ok)
            copies += sum(a and c for a, c in zip(ok, copy))
            keep = guidance.transfer_copies(ok, copy, cfg.copies)
            for s, r, good in zip(batch, rws, keep):
                s.reward = float(r)
                if good:
                    hint_text = job.hint if cfg.hint_placement == "response" else None
                    transferred.append(
                        transfer_back(s, group.prompt_ids, tokenizer, cfg, hint_text=hint_text)
                    )
            _, failed = guidance.step_outcome(group.rewards, ok, cfg.success_threshold)
            if (failed and cfg.hint_escalation == "round" and cfg.adaptive_levels
                    and job.level < ceiling[job.index]):  # fmt: skip
                todo[job.index] = job.level + 1
        rnd += 1

    updates: dict[str, int] = {}
    for i, group in enumerate(groups):
        solved, failed = guidance.step_outcome(group.rewards, accepted.get(i),
                                               cfg.success_threshold)  # fmt: skip
        new = guidance.update_level(current[i], shown=shown.get(i, 0), solved=solved,
                                    guided_failed=failed, max_level=ceiling.get(i, 0),
                                    adaptive=cfg.adaptive_levels)  # fmt: skip
        if new != current[i]:
            updates[group.uid] = new

    stats = {
        "guided/prompts": float(len(shown)),
        "guided/samples": float(samples),
        "guided/rounds": float(rnd),
        "guided/successes": float(successes),
        "guided/accepted": float(n_accepted),
        "guided/accepted_prompts": float(sum(any(v) for v in accepted.values())),
        "guided/copies": float(copies),
        "guided/copy_share": copies / n_accepted if n_accepted else 0.0,
        "guided/transferred": float(len(transferred)),
        "guided/mean_level": sum(shown.values()) / len(shown) if shown else 0.0,
        "guided/too_long": float(too_long),
        "guided/unhintable": float(unhintable),
    }
    return GuidedRound(transferred, updates, stats, generated)


def rationale_segments(rationale: str, cfg: Any, tokenizer: Any) -> list[str]:
    """The rationale's segments (`cfg.segmentation`; its own steps, or at most
    `cfg.n_segments` groups of them; token units are the tokenizer's): the units every
    hint is made of (guided round, probe, the warm start's hinted prompts)."""
    return guidance.segment_rationale(rationale, cfg.n_segments, cfg.segmentation,
                                      token_starts(tokenizer))  # fmt: skip


def place_hint(plain_ids: Sequence[int], hint: str, cfg: Any, tokenizer: Any,
               hinted_prompt: Callable[[str], list[int]]) -> tuple[list[int], list[int]]:
    """(what the sampler continues, the hint ids that start the response) for `hint` placed
    as `cfg.hint_placement` says: in the user message (`hinted_prompt(hint)`, no prefix), or
    after the plain prompt as the start of the response (hint-masked in training)."""
    if cfg.hint_placement == "prompt" or not hint:
        return (hinted_prompt(hint) if hint else list(plain_ids)), []
    prefix = response_hint(tokenizer, hint)
    return list(plain_ids) + prefix, prefix


def _hint_job(index: int, group: PromptGroup, segments: list[str], shown: int, cfg: Any,
              tokenizer: Any, hinted_prompt: HintedPrompt) -> GuidedJob:  # fmt: skip
    hint = guidance.build_hint(segments, shown)
    ids, prefix = place_hint(group.prompt_ids, hint, cfg, tokenizer,
                             lambda h: hinted_prompt(group, h))  # fmt: skip
    return GuidedJob(index, ids, hint, shown, prefix)


def _guided_sample(job: GuidedJob, group: PromptGroup, completion: Completion, cfg: Any,
                   tokenizer: Any) -> Sample:  # fmt: skip
    """A guided completion as a Sample: response placement keeps the hint ids at the start
    of the response (hint-masked) and the plain prompt; prompt placement keeps the hinted
    prompt. Rollout log-probs are kept for an `is` transfer (prompt placement only: the
    hint ids of a response prefix were not sampled)."""
    pre = job.prefix_ids
    ids = list(completion.token_ids)
    keep_lp = cfg.transfer == "is" and not pre and completion.logprobs is not None
    return Sample(
        prompt_ids=list(group.prompt_ids) if pre else list(job.prompt_ids),
        response_ids=pre + ids,
        rollout_logprobs=list(completion.logprobs) if keep_lp else None,
        text=tokenizer.decode(pre + ids, skip_special_tokens=True),
        group=group.group,
        kind="guided",
        hint_level=job.level,
        uid=group.uid,
        hint_mask=[True] * len(pre) + [False] * len(ids) if pre else None,
    )


def response_hint(tokenizer: Any, hint: str) -> list[int]:
    """Response placement: the token ids of the hint that start the response. The engine
    continues after prompt + these ids; they are hint-masked in training (no loss)."""
    return list(tokenizer(hint, add_special_tokens=False)["input_ids"])


def transfer_back(
    guided: Sample,
    unguided_prompt_ids: Sequence[int],
    tokenizer: Any,
    cfg: Any,
    *,
    hint_text: str | None = None,
) -> Sample:
    """Move an accepted guided response to the hint-free prompt.

    The response TEXT is re-tokenised on its own and placed after `unguided_prompt_ids`
    (token ids under the hinted prompt need not be what the tokenizer gives for the same
    text elsewhere). With response placement the copied hint is part of the text
    (`hint_text` must be given) and its tokens are marked in the hint mask, found through
    character offsets. An EOS that ended the guided response is kept.

    `sft` transfer: no rollout log-probs (trained by NLL). `is` transfer: the rollout
    log-probs are the guided (hinted-context) ones; they are kept when re-tokenisation
    reproduced the same response tokens, else set to None with `rollout_prompt_ids` so the
    trainer can recompute log p(y | x + h) for the new tokens before `assemble_batch`.
    """
    if guided.kind != "guided":
        raise ValueError(f"transfer_back expects a guided sample, got kind={guided.kind!r}")
    placement = cfg.hint_placement
    text = guided.text
    if not text and guided.response_ids:
        text = tokenizer.decode(guided.response_ids, skip_special_tokens=True)
    if placement == "response":
        if hint_text is None:
            raise ValueError("hint_text is required with hint_placement='response'")
        if not text.startswith(hint_text):
            text = hint_text + text  # engine text may hold only the generated part
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=placement == "response")
    ids = list(enc["input_ids"])
    hint_mask = None
    if placement == "response" and cfg.transferred_hint == "masked":
        # a token is a hint token if it starts inside the hint's characters
        hint_mask = [int(a) < len(hint_text) for a, _ in enc["offset_mapping"]]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and guided.response_ids and guided.response_ids[-1] == eos:
        ids.append(eos)
        if hint_mask is not None:
            hint_mask.append(False)
    logprobs, rollout_prompt = None, None
    if cfg.transfer == "is":
        rollout_prompt = list(guided.prompt_ids)
        if guided.rollout_logprobs is not None and ids == list(guided.response_ids):
            logprobs = list(guided.rollout_logprobs)
    return Sample(
        prompt_ids=list(unguided_prompt_ids),
        response_ids=ids,
        rollout_logprobs=logprobs,
        text=text,
        group=guided.group,
        kind="transferred",
        reward=guided.reward,
        hint_mask=hint_mask,
        hint_level=guided.hint_level,
        uid=guided.uid,
        rollout_prompt_ids=rollout_prompt,
    )
