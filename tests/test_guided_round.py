"""RGPO's guided round with its records and a tokenizer: transfer back, the response-placed
hint, the rationale sample of LUFFY's slot, and `guided_round` end to end with a scripted
sampler and scorer (trigger, acceptance, transfer, level updates, the length limit)."""


import pytest
from scripted import ScriptedSampler, callbacks, prompt_groups

from rgpo_fast.algos.guidance import HintLevels
from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import assemble_batch
from rgpo_fast.data.prompts import build_prompt, encode_prompt
from rgpo_fast.data.types import SAMPLE_KINDS, Sample
from rgpo_fast.guidance_modes import rationale_sample
from rgpo_fast.guided_round import (
    GUIDED_SEED_OFFSET,
    guided_round,
    response_hint,
    transfer_back,
)

# ---------------------------------------------------------------- transfer back


def test_transfer_sft_retokenises_after_unguided_prompt(chat_tok):
    cfg = get_preset("rgpo")
    x = "(12+17)*3-19+5=?"
    hinted_ids = chat_tok(
        build_prompt(chat_tok, x, "12+17=29\n", hint_template=cfg.hint_template),
        add_special_tokens=False,
    )["input_ids"]
    plain_ids = encode_prompt(chat_tok, x)
    resp_text = "29*3=87\n87-19=68\n68+5=73\nAnswer: 73"
    resp_ids = chat_tok(resp_text, add_special_tokens=False)["input_ids"] + [chat_tok.eos_token_id]
    guided = Sample(
        prompt_ids=hinted_ids,
        response_ids=resp_ids,
        text=resp_text,
        rollout_logprobs=[-0.1] * len(resp_ids),
        group=3,
        kind="guided",
        reward=1.0,
        hint_level=1,
    )
    t = transfer_back(guided, plain_ids, chat_tok, cfg)
    assert t.kind == "transferred" and t.group == 3 and t.reward == 1.0
    assert t.prompt_ids == plain_ids
    assert (
        chat_tok.decode(t.prompt_ids + t.response_ids)
        == chat_tok.decode(plain_ids) + resp_text + "</s>"
    )
    assert t.response_ids[-1] == chat_tok.eos_token_id
    assert t.rollout_logprobs is None and t.hint_mask is None  # sft: no rollout log-probs
    b = assemble_batch([Sample(plain_ids, [5], reward=0.0, group=3), t], cfg)
    assert b.sft_mask.tolist() == [False, True]
    assert b.targets[1][b.response_mask[1]].tolist() == t.response_ids


def test_transfer_is_keeps_hinted_logprobs_and_response_hint_mask(tok):
    cfg = get_preset("guide", hint_placement="response")
    plain = encode_prompt(tok, "1+2*3=?")
    hint = "1+2=3\n"
    hint_ids = response_hint(tok, hint)
    gen = "3*3=9\nAnswer: 9"
    gen_ids = tok(gen, add_special_tokens=False)["input_ids"]
    guided = Sample(
        prompt_ids=plain,
        response_ids=hint_ids + gen_ids,
        text=hint + gen,
        rollout_logprobs=[0.0] * len(hint_ids) + [-0.3] * len(gen_ids),
        hint_mask=[True] * len(hint_ids) + [False] * len(gen_ids),
        kind="guided",
        reward=1.0,
    )
    t = transfer_back(guided, plain, tok, cfg, hint_text=hint)
    assert t.response_ids == hint_ids + gen_ids
    assert t.hint_mask == [True] * len(hint_ids) + [False] * len(gen_ids)
    assert t.rollout_logprobs == guided.rollout_logprobs and t.rollout_prompt_ids == plain
    b = assemble_batch([Sample(plain, [5], reward=0.0, rollout_logprobs=[-1.0]), t], cfg)
    # masks cover exactly the hint tokens: the trainable targets are the generated ones
    trainable = b.response_mask[1] & ~b.hint_mask[1]
    assert tok.decode(b.targets[1][trainable].tolist()) == gen
    assert b.hint_mask[1].sum().item() == len(hint)
    assert b.advantages[1].item() == pytest.approx(1.0)
    # engine text holding only the generated part is completed with the hint
    guided.text = gen
    assert transfer_back(guided, plain, tok, cfg, hint_text=hint).text == hint + gen
    with pytest.raises(ValueError, match="hint_text"):
        transfer_back(guided, plain, tok, cfg)
    with pytest.raises(ValueError, match="guided"):
        transfer_back(t, plain, tok, cfg, hint_text=hint)


def test_transfer_is_drops_logprobs_when_tokens_change(tok):
    cfg = get_preset("guide")
    # the engine produced the unknown-char id path: re-tokenising the text gives other ids
    guided = Sample(prompt_ids=[1], response_ids=[50, 51], text="7",
                    rollout_logprobs=[-0.2, -0.3], kind="guided", reward=1.0)  # fmt: skip
    t = transfer_back(guided, [2], tok, cfg)
    assert t.response_ids == tok("7", add_special_tokens=False)["input_ids"]
    assert t.rollout_logprobs is None and t.rollout_prompt_ids == [1]


def test_luffy_slot_gets_the_shaped_ratio_flag(tok):
    cfg = get_preset("luffy")
    plain = encode_prompt(tok, "1+2=?")
    off = rationale_sample(plain, "1+2=3\nAnswer: 3", tok, reward=1.0)
    assert tok.decode(off.response_ids) == "1+2=3\nAnswer: 3</s>"
    rolls = [
        Sample(plain, [5], reward=0.0, rollout_logprobs=[-1.0]),
        Sample(plain, [6], reward=0.0, rollout_logprobs=[-1.0]),
        off,
    ]
    b = assemble_batch(rolls, cfg)
    assert b.offpolicy_mask.tolist() == [False, False, True]
    assert SAMPLE_KINDS[int(b.kind[2])] == "offpolicy"
    assert b.advantages.tolist() == pytest.approx([-1 / 3, -1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="rationale"):
        rationale_sample(plain, "", tok)


# ---------------------------------------------------------------- the round


def _groups(tok):
    problems = ["1+2=?", "3+4=?", "5+6=?"]
    rewards = [[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]  # prompt 1 has an unguided success
    rationales = ["1+2=3\nAnswer: 3", "3+4=7\nAnswer: 7", ""]  # prompt 2: no rationale
    return problems, prompt_groups(tok, problems, ["3", "7", "11"], rationales, rewards)


def test_guided_round_hints_accepts_transfers_and_moves_levels(tok):
    cfg = get_preset("rgpo")
    problems, groups = _groups(tok)
    levels = HintLevels()
    sampler = ScriptedSampler(tok, {"1+2": ["Answer: 3", "Answer: 4"]})
    rnd = guided_round(groups, levels, cfg, callbacks(tok, sampler, cfg))
    assert sampler.offsets == [GUIDED_SEED_OFFSET]
    # only prompt 0 is guided: prompt 1 succeeded unguided, prompt 2 has no rationale
    assert len(sampler.prompts) == 1 and len(sampler.prompts[0]) == 1
    assert "Partial solution:\n1+2=3" in tok.decode(sampler.prompts[0][0])
    assert [t.text for t in rnd.transferred] == ["Answer: 3"]  # the failed one is dropped
    t = rnd.transferred[0]
    assert t.kind == "transferred" and t.prompt_ids == groups[0].prompt_ids and t.group == 0
    assert t.reward == 1.0 and t.uid == "u0" and t.hint_level == 1
    # solved by an accepted guided answer: level 0 stays 0 (nothing changes)
    assert rnd.level_updates == {}
    assert rnd.stats["guided/prompts"] == 1 and rnd.stats["guided/accepted"] == 1
    assert rnd.stats["guided/successes"] == 1 and rnd.stats["guided/mean_level"] == 1
    assert rnd.generated_tokens == len("Answer: 3") + len("Answer: 4")


def test_guided_round_failure_raises_the_level_and_response_placement(tok):
    cfg = get_preset("rgpo", hint_placement="response")
    problems, groups = _groups(tok)
    levels = HintLevels()
    levels.set("u1", 2)  # level > 0 triggers guidance even after an unguided success
    sampler = ScriptedSampler(tok, {"1+2": ["Answer: 5", "Answer: 6"],
                                    "3+4": ["Answer: 7", "no"]})  # fmt: skip
    rnd = guided_round(groups, levels, cfg, callbacks(tok, sampler, cfg))
    prompts = [tok.decode(p) for p in sampler.prompts[0]]
    # the hint starts the response: plain prompt + hint text; two-line rationales have one
    # partial level, so prompt 1's stored level 2 shows one line, never the whole answer
    assert prompts[0] == tok.decode(groups[0].prompt_ids) + "1+2=3\n"
    assert prompts[1] == tok.decode(groups[1].prompt_ids) + "3+4=7\n"
    # prompt 0: every guided answer wrong at its last partial level -> stays there (1), no
    # second call; prompt 1: a guided 1.0 does not beat the unguided 1.0 (strict), but the
    # unguided success lowers its level below what was shown (1 -> 0)
    assert len(sampler.prompts) == 1
    assert rnd.transferred == [] and rnd.level_updates == {"u0": 1, "u1": 0}


ESCALATE = {"3*3=9": ["Answer: 9", "Answer: 8"],  # two steps shown: one right answer
            "1+2*3": ["Answer: 1", "Answer: 2"]}  # one step shown: both wrong


def _three_step_group(tok):
    return prompt_groups(tok, ["1+2*3=?"], ["9"], ["1+2=3\n3*3=9\nAnswer: 9"], [[0.0, 0.0]])


@pytest.mark.parametrize("copies, kept", [("train", 1), ("once", 1), ("drop", 0)])
def test_round_escalation_reaches_the_next_level_in_the_same_step(tok, copies, kept):
    cfg = get_preset("rgpo", hint_placement="response", copies=copies)
    groups = _three_step_group(tok)
    sampler = ScriptedSampler(tok, ESCALATE)
    rnd = guided_round(groups, HintLevels(), cfg, callbacks(tok, sampler, cfg))
    plain = tok.decode(groups[0].prompt_ids)
    assert [tok.decode(p[0]) for p in sampler.prompts] == [plain + "1+2=3\n",
                                                          plain + "1+2=3\n3*3=9\n"]
    assert sampler.offsets == [GUIDED_SEED_OFFSET, 2 * GUIDED_SEED_OFFSET]
    # the accepted answer completes the reference word for word: a copy, kept by rule
    assert rnd.stats["guided/accepted"] == 1 and rnd.stats["guided/copies"] == 1
    assert rnd.stats["guided/copy_share"] == 1.0 and len(rnd.transferred) == kept
    assert rnd.stats["guided/prompts"] == 1 and rnd.stats["guided/samples"] == 4
    assert rnd.stats["guided/rounds"] == 2 and rnd.stats["guided/mean_level"] == 2
    assert rnd.level_updates == {"u0": 1}  # solved at 2: the next visit tries 1


def test_visit_escalation_tries_one_level_and_never_repeats_it(tok):
    cfg = get_preset("rgpo", hint_placement="response", hint_escalation="visit")
    groups = _three_step_group(tok)
    sampler = ScriptedSampler(tok, ESCALATE)
    levels = HintLevels()
    rnd = guided_round(groups, levels, cfg, callbacks(tok, sampler, cfg))
    assert len(sampler.prompts) == 1 and rnd.transferred == []
    assert rnd.level_updates == {"u0": 2}  # one step failed: the next visit shows two
    levels.set("u0", 2)
    rnd = guided_round(groups, levels, cfg, callbacks(tok, sampler, cfg))
    assert tok.decode(sampler.prompts[1][0]).endswith("1+2=3\n3*3=9\n")
    assert len(rnd.transferred) == 1 and rnd.level_updates == {"u0": 1}


def test_one_segment_rationale_is_not_guided(tok):
    cfg = get_preset("rgpo")
    # one line and one token: no step to show while leaving one ("Answer: 3" would be cut
    # into token chunks, the fallback for a rationale without steps)
    groups = prompt_groups(tok, ["1+2=?"], ["3"], ["3"], [[0.0, 0.0]])
    rnd = guided_round(groups, HintLevels(), cfg, callbacks(tok, ScriptedSampler(tok, {}), cfg))
    assert rnd.stats["guided/unhintable"] == 1 and rnd.stats["guided/prompts"] == 0


def test_guided_round_skips_hinted_prompts_over_the_limit(tok):
    cfg = get_preset("rgpo")
    problems, groups = _groups(tok)
    sampler = ScriptedSampler(tok, {})
    rnd = guided_round(groups, HintLevels(), cfg,
                       callbacks(tok, sampler, cfg, max_prompt_len=10,
                                 hinted_prompt=lambda g, h: [1] * 50))  # fmt: skip
    assert sampler.prompts == [] and rnd.stats["guided/too_long"] == 1
    assert rnd.stats["guided/prompts"] == 0 and rnd.transferred == []


def test_transferred_hint_trained_keeps_the_whole_solution(tok):
    """transferred_hint='trained': the hint at the start of an accepted response is trained
    with the rest (no hint mask), as prompt placement trains a solution restating its hint;
    it needs the sft transfer (hint tokens have no rollout log-probs)."""
    cfg = get_preset("rgpo", hint_placement="response", transferred_hint="trained")
    plain = encode_prompt(tok, "1+2*3=?")
    hint, gen = "1+2=3\n", "3*3=9\nAnswer: 9"
    ids = tok(hint + gen, add_special_tokens=False)["input_ids"]
    guided = Sample(prompt_ids=plain, response_ids=ids, text=hint + gen, kind="guided",
                    reward=1.0)  # fmt: skip
    t = transfer_back(guided, plain, tok, cfg, hint_text=hint)
    assert t.hint_mask is None and t.response_ids == ids
    b = assemble_batch([Sample(plain, [5], reward=0.0), t], cfg)
    assert not b.hint_mask.any() and b.sft_mask.tolist() == [False, True]
    with pytest.raises(ValueError, match="transferred_hint='trained' needs transfer='sft'"):
        get_preset("rgpo", transfer="is", transferred_hint="trained")
