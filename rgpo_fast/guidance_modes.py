"""Guidance modes: what a step adds to its unguided groups, one registered entry per
`AlgoConfig.guidance` name.

A step runs (trainer/collect.py; the TRL adapter runs the guide part on TRL's groups):

    unguided groups   `on_policy(cfg, G)` samples per prompt from the plain prompt, scored
    complete          the mode may add to each fresh group (LUFFY's rationale slots), before
                      dynamic sampling judges the group
    dynamic sampling  DAPO's filter and refill (algos/dynamic_sampling.py), when enabled
    guide             the mode's guidance on the kept groups -> `Guidance`

Every mode takes the same `PromptGroup` records and the same `Callbacks` (sampler, scorer,
hinted prompt), so it runs wherever those can be given:

    none    nothing: the unguided groups are trained as they are (GRPO, DAPO, Dr. GRPO)
    rgpo    RGPO's guided round (guided_round.py): accepted guided responses are moved to
            the hint-free prompt and trained there (RGPO, Guide)
    ghpo    GHPO: a group whose samples all failed is sampled again with omega-hints in the
            prompt, up to len(ghpo_omegas) times with growing hints, and replaces the failed
            group in place; it is trained in the hinted context
    luffy   LUFFY: G - s on-policy samples plus the reference rationale in s off-policy
            slots of each group (shaped ratio in the loss)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rgpo_fast.algos import guidance
from rgpo_fast.algos.registry import Registry
from rgpo_fast.data.prompts import encode_text
from rgpo_fast.data.types import Sample
from rgpo_fast.guided_round import Callbacks, PromptGroup, guided_round

# Seed offset of GHPO's regeneration round r (times r + 1): apart from the guided round's.
GHPO_SEED_OFFSET = 104729


@dataclass
class Guidance:
    """What a mode's guidance produced for the step."""

    samples: list[Sample]  # everything to train: the groups' samples and any added ones
    level_updates: dict[str, int] = field(default_factory=dict)  # uid -> new hint level
    stats: dict[str, float] = field(default_factory=dict)  # guided/* metrics
    generated_tokens: int = 0  # tokens the guidance sampled


def _all_samples(groups: Sequence[PromptGroup]) -> list[Sample]:
    return [s for g in groups for s in g.samples]


def _same_group_size(cfg: Any, group_size: int) -> int:
    return group_size


def _nothing(groups: list[PromptGroup], cfg: Any, io: Callbacks) -> None:
    return None


@dataclass(frozen=True)
class GuidanceMode:
    """A guidance mode (module docstring): `guide(groups, levels, cfg, io)` after dynamic
    sampling; `on_policy(cfg, G)` unguided samples per prompt; `complete(groups, cfg, io)`
    adds to fresh groups in place, before dynamic sampling."""

    guide: Callable[[list[PromptGroup], guidance.HintLevels, Any, Callbacks], Guidance]
    on_policy: Callable[[Any, int], int] = _same_group_size
    complete: Callable[[list[PromptGroup], Any, Callbacks], None] = _nothing


GUIDANCE: Registry = Registry("guidance mode")


def no_guidance(groups: list[PromptGroup], levels: guidance.HintLevels, cfg: Any,
                io: Callbacks) -> Guidance:  # fmt: skip
    return Guidance(_all_samples(groups))


def rgpo_guidance(groups: list[PromptGroup], levels: guidance.HintLevels, cfg: Any,
                  io: Callbacks) -> Guidance:  # fmt: skip
    """RGPO / Guide: the guided round; its transferred samples join the groups' samples."""
    rnd = guided_round(groups, levels, cfg, io)
    return Guidance(_all_samples(groups) + rnd.transferred, rnd.level_updates, rnd.stats,
                    rnd.generated_tokens)  # fmt: skip


def ghpo_guidance(groups: list[PromptGroup], levels: guidance.HintLevels, cfg: Any,
                  io: Callbacks) -> Guidance:  # fmt: skip
    """GHPO: an all-failed group is regenerated with omega-hints (in the user message) and
    replaces the failed group in place (same position, same group id); it is trained in the
    hinted context. A hinted prompt over `io.max_prompt_len` leaves its group as it is
    (counted in `guided/too_long`)."""
    stages: list[int | None] = [None] * len(groups)
    has = [bool(g.rationale.strip()) for g in groups]
    generated = guided = too_long = 0
    for rnd in range(len(cfg.ghpo_omegas)):
        nxt = guidance.ghpo_escalate([g.rewards for g in groups], stages, cfg, has)
        todo, prompts = [], []
        for i in (i for i, s in enumerate(nxt) if s is not None):
            hint = guidance.ghpo_hint(groups[i].rationale, cfg.ghpo_omegas[nxt[i]])
            ids = io.hinted_prompt(groups[i], hint)
            if io.max_prompt_len is None or len(ids) <= io.max_prompt_len:
                todo.append(i)
                prompts.append(ids)
            else:  # this and longer hints do not fit: the group stays as it is
                too_long += 1
                has[i] = False
        if not todo:
            break
        completions = io.generate(prompts, io.group_size, GHPO_SEED_OFFSET * (rnd + 1),
                                  [groups[i].vision for i in todo])
        regrouped = []
        for i, prompt, comps in zip(todo, prompts, completions):
            stages[i] = nxt[i]
            guided += 1
            g = groups[i]
            generated += sum(len(c.token_ids) for c in comps)
            regrouped.append([Sample(
                prompt_ids=list(prompt), response_ids=list(c.token_ids),
                text=io.tokenizer.decode(list(c.token_ids), skip_special_tokens=True),
                group=g.group, kind="guided", uid=g.uid, hint_level=nxt[i] + 1)
                for c in comps])  # fmt: skip
        rewards = io.score([groups[i] for i in todo], regrouped)
        for i, samples, rws in zip(todo, regrouped, rewards):
            for s, r in zip(samples, rws):
                s.reward = float(r)
            groups[i].samples, groups[i].rewards = samples, list(rws)
    stats = {"guided/prompts": float(guided), "guided/accepted": 0.0,
             "guided/too_long": float(too_long)}  # fmt: skip
    return Guidance(_all_samples(groups), stats=stats, generated_tokens=generated)


def rationale_sample(prompt_ids: Sequence[int], rationale: str, tokenizer, *,
                     reward: float | None = None, uid: str = "", group: int = 0,
                     add_eos: bool = True) -> Sample:  # fmt: skip
    """The prompt's reference rationale as an off-policy response (LUFFY's slot). Its
    tokens get the shaped ratio f = p / (p + gamma) in the loss (offpolicy_mask); no
    rollout log-probs."""
    if not rationale:
        raise ValueError("rationale_sample needs a non-empty rationale")
    ids = encode_text(tokenizer, rationale)
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        ids.append(eos)
    return Sample(prompt_ids=list(prompt_ids), response_ids=ids, text=rationale,
                  kind="offpolicy", reward=reward, uid=uid, group=group)  # fmt: skip


def luffy_slots(cfg: Any, group_size: int) -> int:
    """s, the off-policy slots of a group: at least one on-policy sample stays."""
    return min(cfg.luffy_offpolicy_slots, group_size - 1)


def luffy_on_policy(cfg: Any, group_size: int) -> int:
    return group_size - luffy_slots(cfg, group_size)


def luffy_complete(groups: list[PromptGroup], cfg: Any, io: Callbacks) -> None:
    """LUFFY: s copies of the scored reference rationale join each group that has one. The
    group's `rewards` stay the on-policy ones (dynamic sampling judges the policy's own
    samples); the slots carry their reward for the advantages."""
    slots = luffy_slots(cfg, io.group_size)
    todo = [g for g in groups if g.rationale.strip() and slots >= 1]
    if not todo:
        return
    refs = [[rationale_sample(g.prompt_ids, g.rationale, io.tokenizer, uid=g.uid,
                              group=g.group)] for g in todo]  # fmt: skip
    for g, (r,) in zip(todo, io.score(todo, refs)):
        for _ in range(slots):
            g.samples.append(rationale_sample(g.prompt_ids, g.rationale, io.tokenizer,
                                              reward=float(r), uid=g.uid, group=g.group))


GUIDANCE.register("none")(GuidanceMode(no_guidance))
GUIDANCE.register("rgpo")(GuidanceMode(rgpo_guidance))
GUIDANCE.register("ghpo")(GuidanceMode(ghpo_guidance))
GUIDANCE.register("luffy")(GuidanceMode(no_guidance, luffy_on_policy, luffy_complete))
