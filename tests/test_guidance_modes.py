"""Every guidance mode (rgpo_fast/guidance_modes.py) driven with a scripted sampler and
scorer (tests/scripted.py), and `collect` (trainer/collect.py) end to end on a scripted
engine: what each mode returns, group ids, LUFFY's slots, GHPO's regrouping, dynamic
sampling's refill."""

from scripted import ScriptedEngine, ScriptedSampler, callbacks, exact_score, prompt_groups

from rgpo_fast.algos.guidance import HintLevels
from rgpo_fast.algos.presets import GUIDANCE_MODES, PRESETS, get_preset
from rgpo_fast.data.types import Example, Sample
from rgpo_fast.guidance_modes import GHPO_SEED_OFFSET, GUIDANCE
from rgpo_fast.guided_round import GUIDED_SEED_OFFSET
from rgpo_fast.rollout.base import SamplingParams
from rgpo_fast.trainer.collect import REFILL_SEED_OFFSET, CollectContext, collect

RAT = "1+2=3\nAnswer: 3"


def _with_samples(tok, groups, texts):
    """Give each group unguided samples with these texts (their rewards are the groups')."""
    for g, row in zip(groups, texts):
        g.samples = [Sample(prompt_ids=list(g.prompt_ids), response_ids=tok.encode(t),
                            text=t, group=g.group, reward=r, uid=g.uid)
                     for t, r in zip(row, g.rewards)]  # fmt: skip
    return groups


def test_every_configurable_mode_is_registered():
    assert sorted(GUIDANCE.names()) == sorted(GUIDANCE_MODES)
    assert {get_preset(name).guidance for name in PRESETS} <= set(GUIDANCE.names())


def test_none_trains_the_groups_as_they_are(tok):
    groups = _with_samples(tok, prompt_groups(tok, ["1+2=?"], ["3"], [RAT], [[0.0, 1.0]]),
                           [["4", "3"]])  # fmt: skip
    sampler = ScriptedSampler(tok, {})
    out = GUIDANCE.get("none").guide(groups, HintLevels(4), get_preset("grpo"),
                                     callbacks(tok, sampler, get_preset("grpo"), group_size=2))
    assert out.samples == groups[0].samples and sampler.prompts == []
    assert out.level_updates == {} and out.stats == {} and out.generated_tokens == 0


def test_rgpo_returns_the_groups_then_the_transferred(tok):
    cfg = get_preset("rgpo")
    groups = _with_samples(tok, prompt_groups(tok, ["1+2=?"], ["3"], [RAT], [[0.0, 0.0]]),
                           [["4", "5"]])  # fmt: skip
    sampler = ScriptedSampler(tok, {"1+2": ["Answer: 3", "Answer: 9"]})
    out = GUIDANCE.get("rgpo").guide(groups, HintLevels(cfg.n_segments), cfg,
                                     callbacks(tok, sampler, cfg, group_size=4))
    assert [s.kind for s in out.samples] == ["unguided", "unguided", "transferred"]
    assert out.samples[2].text == "Answer: 3" and out.samples[2].group == 0
    assert out.stats["guided/accepted"] == 1 and sampler.offsets == [GUIDED_SEED_OFFSET]
    assert out.generated_tokens == len("Answer: 3") + len("Answer: 9")


def test_ghpo_regroups_failed_groups_with_growing_hints(tok):
    cfg = get_preset("ghpo")  # omegas 0.25, 0.5, 0.75
    groups = _with_samples(tok, prompt_groups(
        tok, ["1+2=?", "2+2=?", "5+5=?"], ["3", "4", "10"], [RAT, "2+2=4\nAnswer: 4", ""],
        [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), [["9", "8"], ["4", "7"], ["1", "2"]])
    kept = [list(g.samples) for g in groups]
    # prompt 0 fails again with the first hint, then succeeds once with the second
    sampler = ScriptedSampler(tok, {"1+2": [["no", "nope"], ["Answer: 3", "x"]]})
    out = GUIDANCE.get("ghpo").guide(groups, HintLevels(4), cfg,
                                     callbacks(tok, sampler, cfg, group_size=2))
    assert sampler.offsets == [GHPO_SEED_OFFSET, 2 * GHPO_SEED_OFFSET]
    first, second = (tok.decode(call[0]) for call in sampler.prompts)
    assert RAT[:4] in first and RAT[:8] not in first and RAT[:8] in second  # ceil(omega * 15)
    g0 = groups[0]
    assert [s.text for s in g0.samples] == ["Answer: 3", "x"] and g0.rewards == [1.0, 0.0]
    assert all(s.kind == "guided" and s.group == 0 and s.hint_level == 2 for s in g0.samples)
    assert tok.decode(g0.samples[0].prompt_ids) == second  # trained in the hinted context
    assert groups[1].samples == kept[1] and groups[2].samples == kept[2]  # success, no rationale
    assert out.samples == [s for g in groups for s in g.samples]
    assert out.stats == {"guided/prompts": 2.0, "guided/accepted": 0.0, "guided/too_long": 0.0}
    assert out.generated_tokens == len("nonope") + len("Answer: 3x")


def test_ghpo_leaves_a_group_whose_hinted_prompt_is_too_long(tok):
    cfg = get_preset("ghpo")
    groups = _with_samples(tok, prompt_groups(tok, ["1+2=?"], ["3"], [RAT], [[0.0, 0.0]]),
                           [["9", "8"]])  # fmt: skip
    kept = list(groups[0].samples)
    sampler = ScriptedSampler(tok, {})
    out = GUIDANCE.get("ghpo").guide(groups, HintLevels(4), cfg, callbacks(
        tok, sampler, cfg, group_size=2, max_prompt_len=5))
    assert sampler.prompts == [] and groups[0].samples == kept
    assert out.stats["guided/too_long"] == 1 and out.stats["guided/prompts"] == 0


def test_luffy_puts_the_scored_rationale_in_its_slots(tok):
    cfg = get_preset("luffy", luffy_offpolicy_slots=2)
    mode = GUIDANCE.get("luffy")
    assert mode.on_policy(cfg, 4) == 2 and mode.on_policy(cfg, 2) == 1  # one stays on-policy
    groups = _with_samples(tok, prompt_groups(tok, ["1+2=?", "5+5=?"], ["3", "10"], [RAT, ""],
                                              [[0.0, 0.0], [0.0, 1.0]]), [["9", "8"], ["1", "10"]])
    scored = []

    def score(gs, samples):
        scored.append([g.uid for g in gs])
        return exact_score(gs, samples)

    mode.complete(groups, cfg, callbacks(tok, ScriptedSampler(tok, {}), cfg, group_size=4,
                                         score=score))  # fmt: skip
    assert scored == [["u0"]]  # once per group that has a rationale
    slots = groups[0].samples[2:]
    assert [s.kind for s in slots] == ["offpolicy", "offpolicy"]
    assert all(s.reward == 1.0 and s.text == RAT and s.group == 0 for s in slots)
    assert groups[0].rewards == [0.0, 0.0]  # dynamic sampling judges the on-policy samples
    assert len(groups[1].samples) == 2  # no rationale, no slot
    out = mode.guide(groups, HintLevels(4), cfg, callbacks(tok, ScriptedSampler(tok, {}), cfg))
    assert len(out.samples) == 6


# ---------------------------------------------------------------- collect, end to end


def _context(tok, engine, algo, n=2):
    return CollectContext(engine=engine, tokenizer=tok, algo=algo,
                          reward_fn=lambda text, answer: float(text.strip().endswith(answer)),
                          sampling=SamplingParams(n=n, max_new_tokens=8))  # fmt: skip


def _examples(*rows):
    return [Example(problem=p, answer=a, rationale=r, uid=p) for p, a, r in rows]


def test_dynamic_sampling_refills_and_group_ids_index_the_kept_prompts(tok):
    algo = get_preset("dapo", max_extra_rounds=2)
    engine = ScriptedEngine(tok, {"1+1": ["2", "2"], "2+2": ["4", "5"], "3+3": ["6", "0"]})
    refills = [_examples(("3+3=?", "6", ""))]
    out = collect(_context(tok, engine, algo), _examples(("1+1=?", "2", ""), ("2+2=?", "4", "")),
                  HintLevels(4), seed=10, refill=lambda: refills.pop(0) if refills else [])
    # 1+1 is all correct (no variance): dropped; 3+3 from the refill takes its place
    assert [s.uid for s in out.samples] == ["2+2=?", "2+2=?", "3+3=?", "3+3=?"]
    assert [s.group for s in out.samples] == [0, 0, 1, 1]
    assert out.unguided_rewards == [[1.0, 0.0], [1.0, 0.0]]
    assert out.stats["dynamic/dropped"] == 1 and out.stats["dynamic/rounds"] == 1
    assert [c[2] for c in engine.calls] == [10, 10 + REFILL_SEED_OFFSET]
    assert out.generated_tokens == len("2245") + len("60")


def test_collect_runs_the_configured_mode(tok):
    """LUFFY through collect: G - s on-policy samples are asked of the engine, the slots
    are added before anything else sees the group."""
    algo = get_preset("luffy", luffy_offpolicy_slots=1)
    engine = ScriptedEngine(tok, {"1+2": ["9"]})
    out = collect(_context(tok, engine, algo, n=2), _examples(("1+2=?", "3", RAT)),
                  HintLevels(4), seed=0)
    assert engine.calls == [(1, 1, 0)]
    assert [s.kind for s in out.samples] == ["unguided", "offpolicy"]
    assert [s.reward for s in out.samples] == [0.0, 1.0] and out.unguided_rewards == [[0.0]]
