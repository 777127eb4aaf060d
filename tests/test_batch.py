"""TrainBatch assembly: alignment with targets, masks, advantages per kind."""

import pytest
import torch

from rgpo_fast.algos.advantages import compute_advantages
from rgpo_fast.algos.presets import get_preset
from rgpo_fast.batch import assemble_batch
from rgpo_fast.data.types import SAMPLE_KINDS, Sample


def _ro(p, r, **kw):
    return Sample(prompt_ids=p, response_ids=r, **kw)


def test_alignment_with_targets_hand_worked():
    rolls = [
        _ro([1, 2, 3], [4, 5], reward=1.0, rollout_logprobs=[-0.1, -0.2]),
        _ro([1, 2], [6, 7, 8], reward=0.0, rollout_logprobs=[-1.0, -2.0, -3.0]),
    ]
    b = assemble_batch(rolls, get_preset("grpo"), pad_token_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 6, 7, 8]]
    # targets are input_ids[:, 1:]; mask marks targets that are response tokens
    assert b.targets.tolist() == [[2, 3, 4, 5], [2, 6, 7, 8]]
    assert b.response_mask.tolist() == [[False, False, True, True], [False, True, True, True]]
    assert torch.allclose(
        b.rollout_logprobs, torch.tensor([[0, 0, -0.1, -0.2], [0, -1.0, -2.0, -3.0]])
    )
    # both in group 0: GRPO advantages of (1, 0)
    expected = compute_advantages("grpo", torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))
    assert torch.allclose(b.advantages, expected)


def test_padding_and_hint_mask_cover_exactly_the_hint_tokens():
    rolls = [
        _ro([9, 9], [1, 2, 3, 4], hint_mask=[True, True, False, False], reward=1.0),
        _ro([9, 9, 9], [5], reward=0.0),
    ]
    b = assemble_batch(rolls, get_preset("grpo"), pad_token_id=0)
    assert b.input_ids.tolist() == [[9, 9, 1, 2, 3, 4], [9, 9, 9, 5, 0, 0]]
    assert b.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert b.hint_mask.tolist() == [[False, True, True, False, False], [False] * 5]
    trainable = b.response_mask & ~b.hint_mask
    assert b.targets[trainable].tolist() == [3, 4, 5]


def test_kinds_sft_transfer_and_offpolicy():
    cfg = get_preset("rgpo")
    rolls = [
        _ro([1], [2], reward=0.0, group=0),
        _ro([1], [3], reward=0.0, group=0),
        _ro([1], [4, 5], reward=1.0, group=0, kind="transferred"),
        _ro([6], [7], reward=1.0, group=1),
        _ro([6], [8], reward=0.0, group=1),
    ]
    b = assemble_batch(rolls, cfg)
    assert [SAMPLE_KINDS[int(k)] for k in b.kind] == ["unguided", "unguided", "transferred",
                                                     "unguided", "unguided"]
    assert b.sft_mask.tolist() == [False, False, True, False, False]
    assert b.advantages[2] == 0.0  # sft rows learn by NLL only
    assert b.advantages[:2].tolist() == [0.0, 0.0]  # all-failed group: no signal
    assert b.advantages[3] > 0 > b.advantages[4]
    kw = b.loss_inputs()
    assert set(kw) == {"targets", "mask", "advantages", "hint_mask", "sft_mask", "offpolicy_mask"}

    luffy = get_preset("luffy")
    rolls = [
        _ro([1], [2], reward=0.0),
        _ro([1], [3], reward=0.0),
        _ro([1], [4], reward=1.0, kind="offpolicy"),
    ]
    b = assemble_batch(rolls, luffy)
    assert b.offpolicy_mask.tolist() == [False, False, True]
    # Dr. GRPO advantages over the mixed group: r - mean = (-1/3, -1/3, 2/3)
    assert b.advantages.tolist() == pytest.approx([-1 / 3, -1 / 3, 2 / 3])


def test_is_transfer_advantage_and_rollout_logprobs():
    cfg = get_preset("guide")
    rolls = [
        _ro([1], [2], reward=0.0, rollout_logprobs=[-0.5]),
        _ro([1], [3], reward=0.25, rollout_logprobs=[-0.7]),
        _ro([1], [4, 5], reward=1.0, kind="transferred", rollout_logprobs=[-0.1, -0.2]),
    ]
    b = assemble_batch(rolls, cfg)
    assert not b.sft_mask.any()
    assert b.advantages[2].item() == pytest.approx(1.0 - 0.125)  # r - mean(unguided)
    assert b.rollout_logprobs[2].tolist() == pytest.approx([-0.1, -0.2])
    rolls[2] = _ro([1], [4, 5], reward=1.0, kind="transferred")
    with pytest.raises(ValueError, match="hinted-context log-probs"):
        assemble_batch(rolls, cfg)


def test_missing_rollout_logprobs_are_filled_by_old():
    rolls = [_ro([1], [2, 3], reward=1.0, rollout_logprobs=[-0.1, -0.2]), _ro([1], [4], reward=0.0)]
    b = assemble_batch(rolls, get_preset("grpo"))
    with pytest.raises(ValueError, match="set_old_logprobs"):
        b.loss_inputs()
    old = torch.full((2, 2), -3.0)
    b.set_old_logprobs(old)
    kw = b.loss_inputs()
    assert torch.allclose(kw["rollout_logprobs"], torch.tensor([[-0.1, -0.2], [-3.0, -3.0]]))
    assert kw["old_logprobs"] is b.old_logprobs


def test_bad_inputs():
    cfg = get_preset("rgpo")
    with pytest.raises(ValueError, match="kind"):
        _ro([1], [2], kind="weird")
    with pytest.raises(ValueError, match="rollout_logprobs"):
        _ro([1], [2], rollout_logprobs=[0.1, 0.2])
    with pytest.raises(ValueError, match="transfer_back"):
        assemble_batch([_ro([1], [2], reward=1.0, kind="guided")], cfg)
    with pytest.raises(ValueError, match="no reward"):
        assemble_batch([_ro([1], [2])], cfg)
    assert assemble_batch([_ro([1], [2])], cfg, rewards=[1.0]).rewards.tolist() == [1.0]
    assert len(SAMPLE_KINDS) == 5


def test_sft_rows_are_trained_by_nll_alone_whatever_the_transfer():
    """The warm start's rows (kind "sft"): no group advantage, sft_mask set, under an `is`
    transfer too (which would give a transferred row an advantage and ask for log-probs)."""
    rows = [_ro([1], [2, 3], reward=1.0, kind="sft"), _ro([1], [4], reward=0.0),
            _ro([1], [5], reward=1.0)]
    for transfer in ("sft", "is"):
        b = assemble_batch(rows, get_preset("rgpo", transfer=transfer))
        assert b.sft_mask.tolist() == [True, False, False]
        assert b.advantages[0] == 0.0 and b.advantages[1] == -b.advantages[2] != 0.0
