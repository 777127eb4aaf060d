"""RGPO's pure decisions, hand-worked: segmentation, trigger, hint, acceptance, levels;
GHPO's hint and escalation. (The guided round with records and a tokenizer:
tests/test_guided_round.py.)"""

import json

import pytest
from scripted import RAT

from rgpo_fast.algos.guidance import (
    HintLevels,
    accept,
    build_hint,
    ghpo_escalate,
    ghpo_hint,
    hint_level_used,
    is_copy,
    max_hint_level,
    needs_guidance,
    segment_rationale,
    step_outcome,
    transfer_copies,
    update_level,
)
from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import assemble_batch
from rgpo_fast.data.prompts import build_prompt, encode_prompt, token_starts
from rgpo_fast.data.types import Sample

# ---------------------------------------------------------------- segmentation


def test_segment_lines_groups_evenly_and_concatenates_back():
    segs = segment_rationale(RAT, 4, "auto")
    # 5 lines into 4 segments: bounds round(i * 5 / 4) = 0, 1, 2, 4, 5
    assert segs == ["12+17=29\n", "29*3=87\n", "87-19=68\n68+5=73\n", "Answer: 73"]
    assert "".join(segs) == RAT
    assert segment_rationale("a\nb", 4, "lines") == ["a\n", "b"]  # fewer units than N
    assert segment_rationale("", 4) == [] and segment_rationale("  \n", 4) == []


def test_segment_steps_and_sentences():
    text = "We start. 1. Add 2 and 3 to get 5.\n2. Double it: 10.\n3. So 10."
    assert segment_rationale(text, 4, "steps") == [
        "We start. 1. Add 2 and 3 to get 5.\n",
        "2. Double it: 10.\n",
        "3. So 10.",
    ]
    assert segment_rationale("One. Two! Three? Four.", 2, "sentences") == [
        "One. Two! ",
        "Three? Four.",
    ]


def test_segment_tokens_fallback_uses_token_offsets(tok):
    segs = segment_rationale("abcdefgh", 4, "auto", token_starts(tok))  # one unit: token chunks
    assert segs == ["ab", "cd", "ef", "gh"]
    assert segment_rationale("aa bb cc", 3, "tokens") == ["aa ", "bb ", "cc"]  # words
    with pytest.raises(ValueError, match="mode"):
        segment_rationale(RAT, 4, "paragraphs")
    with pytest.raises(ValueError, match="n must"):
        segment_rationale(RAT, 0)


def test_segments_default_to_the_rationales_own_steps(tok):
    # n unset: one segment per line, so level k shows k distinct lines
    assert segment_rationale(RAT) == ["12+17=29\n", "29*3=87\n", "87-19=68\n", "68+5=73\n",
                                      "Answer: 73"]
    # a blank line joins the step before it: no level adds only whitespace
    assert segment_rationale("a\n\nb\n") == ["a\n\n", "b\n"]
    assert segment_rationale("One. Two.") == ["One. ", "Two."]
    assert segment_rationale("abcdefgh", None, "auto", token_starts(tok)) == ["ab", "cd", "ef",
                                                                             "gh"]
    # every countdown reference: one segment per step line, distinct, rebuilding the text
    from rgpo_fast.data.countdown import make_countdown

    for ex in make_countdown(0, 64, "hard"):
        segs = segment_rationale(ex.rationale)
        assert len(segs) == ex.meta["steps"] and "".join(segs) == ex.rationale
        hints = [build_hint(segs, k) for k in range(1, len(segs))]
        assert len(set(hints)) == len(hints)


# ---------------------------------------------------------------- trigger and hint


def test_trigger_rgpo_vs_guide():
    rgpo, guide = get_preset("rgpo"), get_preset("guide")
    levels = [0, 2, 0, 1]
    rewards = [[0, 0], [1, 0], [1, 1], [0, 0]]
    assert needs_guidance(levels, rewards, rgpo) == [True, True, False, True]
    assert needs_guidance(levels, rewards, guide) == [True, False, False, True]
    assert needs_guidance(levels, rewards, rgpo, has_rationale=[False, True, True, True]) == [
        False,
        True,
        False,
        True,
    ]
    assert needs_guidance(levels, rewards, get_preset("grpo")) == [False] * 4
    with pytest.raises(ValueError, match="differ"):
        needs_guidance([0], rewards, rgpo)


def test_hint_is_first_max_level_1_segments_never_the_whole_rationale():
    segs = segment_rationale(RAT, 4)
    top = max_hint_level(len(segs))
    assert top == 3  # all segments but the last: the model always writes a step
    assert build_hint(segs, hint_level_used(0, top)) == "12+17=29\n"
    assert build_hint(segs, hint_level_used(2, top)) == "12+17=29\n29*3=87\n"
    assert hint_level_used(9, top) == 3  # a stored level above the ceiling is clamped
    assert build_hint(segs, 4) == RAT
    # ablation: full hint
    assert build_hint(segs, hint_level_used(0, max_hint_level(4, False), False)) == RAT
    assert max_hint_level(1) == 0 and max_hint_level(0) == 0  # no partial hint: not guided


def test_prompt_placement_goes_in_user_message(chat_tok, tok):
    tmpl = get_preset("rgpo").hint_template
    text = build_prompt(chat_tok, "(12+17)*3-19+5=?", "12+17=29\n", hint_template=tmpl)
    assert text == (
        "<|im_start|>user\n(12+17)*3-19+5=?\n\nPartial solution:\n12+17=29"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = build_prompt(None, "1+2=?", "1+2=3", hint_template=tmpl)
    assert plain == "1+2=?\n\nPartial solution:\n1+2=3\n"
    assert tok.decode(encode_prompt(tok, "1+2=?")) == "1+2=?\n"


# ---------------------------------------------------------------- acceptance, levels


def test_acceptance_is_strict():
    assert accept([1.0, 0.5, 0.0], [0.5, 0.0]) == [True, False, False]  # tie 0.5 rejected
    assert accept([1.0], [1.0]) == [False]
    assert accept([1.0, 0.5], [0.5], mode="any_success") == [True, True]
    with pytest.raises(ValueError, match="unguided"):
        accept([1.0], [])


def test_levels_follow_what_was_shown_and_stay_in_range():
    def up(level, shown, solved=False, failed=False, top=3, adaptive=True):
        return update_level(level, shown=shown, solved=solved, guided_failed=failed,
                            max_level=top, adaptive=adaptive)

    # a fresh prompt (level 0) is shown one step; failing it moves on to two, not to
    # "level 1" = one step again (the wasted escalation)
    assert up(0, shown=1, failed=True) == 2
    assert up(2, shown=3, failed=True) == 3  # round escalation got to 3 and failed: stays
    assert up(3, shown=3, failed=True) == 3  # cap: the prompt's last partial level
    assert up(2, shown=2, solved=True) == 1  # solved at 2: next visit tries 1
    assert up(1, shown=3, solved=True) == 2  # solved after escalating to 3: next tries 2
    assert up(2, shown=0, solved=True) == 1  # unguided success, not guided: one down
    assert up(0, shown=1, solved=True) == 0
    assert up(2, shown=0) == 2  # neither: unchanged
    assert up(2, shown=2, failed=True, adaptive=False) == 2
    with pytest.raises(ValueError, match="level"):
        up(-1, shown=0)
    # (solved, guided_failed) from a step's outcome
    assert step_outcome([0, 0], [False, False]) == (False, True)
    assert step_outcome([0, 0], [False, True]) == (True, False)
    assert step_outcome([1, 0], None) == (True, False)
    assert step_outcome([0, 0], None) == (False, False)


def test_copies_are_transferred_by_rule():
    assert is_copy("3+4=7 | 7\n7*2=14 | 14", " 3+4=7 | 7\n7*2=14 | 14\n")
    assert not is_copy("4+3=7 | 7\n7*2=14 | 14", "3+4=7 | 7\n7*2=14 | 14")
    ok, copy = [True, True, False, True, True], [True, False, True, True, False]
    assert transfer_copies(ok, copy, "train") == ok
    assert transfer_copies(ok, copy, "once") == [True, True, False, False, True]
    assert transfer_copies(ok, copy, "drop") == [False, True, False, False, True]
    with pytest.raises(ValueError, match="copy rule"):
        transfer_copies(ok, copy, "half")


def test_hint_levels_table_survives_checkpoint(tmp_path):
    levels = HintLevels()
    levels.set("p1", 2)
    levels.set("p2", 1)
    levels.set("p2", 0)  # back to the default: not stored
    assert levels.get_many(["p1", "p2", "new"]) == [2, 0, 0] and levels.levels == {"p1": 2}
    path = tmp_path / "levels.json"
    path.write_text(json.dumps(levels.state_dict()))
    restored = HintLevels()
    restored.load_state_dict(json.loads(path.read_text()))
    assert restored.levels == {"p1": 2}
    # a checkpoint written with a global segment count still loads
    restored.load_state_dict({"n_segments": 2, "adaptive": True, "levels": {"x": 3}})
    assert restored.levels == {"x": 3}
    with pytest.raises(ValueError, match="negative"):
        restored.load_state_dict({"levels": {"x": -1}})


# ---------------------------------------------------------------- GHPO


def test_ghpo_hint_and_escalation_only_for_all_failed():
    assert ghpo_hint("abcdefgh", 0.25) == "ab"
    assert ghpo_hint("abcdefghi", 0.5) == "abcde"  # ceil
    cfg = get_preset("ghpo")
    rewards = [[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    stages = [None, None, 0, 1, 2]
    assert ghpo_escalate(rewards, stages, cfg) == [0, None, 1, 2, None]
    assert ghpo_escalate(rewards, stages, cfg, has_rationale=[False] + [True] * 4) == [
        None,
        None,
        1,
        2,
        None,
    ]


def test_ghpo_guided_group_is_trained_in_hinted_context():
    cfg = get_preset("ghpo")
    rolls = [
        Sample([1, 9, 9], [2], reward=1.0, kind="guided", group=0),
        Sample([1, 9, 9], [3], reward=0.0, kind="guided", group=0),
    ]
    b = assemble_batch(rolls, cfg)
    assert b.input_ids[:, :3].tolist() == [[1, 9, 9]] * 2
    assert b.advantages[0] > 0 > b.advantages[1] and not b.sft_mask.any()


def test_hint_levels_set_stores_merged_levels_and_checks_range():
    levels = HintLevels()
    levels.set("a", 3)
    levels.set("b", 0)
    assert levels.get("a") == 3 and "b" not in levels.levels
    levels.set("a", 0)
    assert levels.levels == {}
    with pytest.raises(ValueError, match="hint level"):
        levels.set("a", -1)
