"""Advantage estimators and aggregation weights against hand counts."""

import pytest
import torch

from rgpo_fast.algos import AGG_MODES, aggregation_weights, compute_advantages
from rgpo_fast.algos.policy_loss import KL_TERMS, LossConfig


def test_grpo_hand_values():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    g = torch.tensor([0, 0, 0, 1, 1, 7])  # groups need not be contiguous or equal-sized
    a = compute_advantages("grpo", r, g)
    # group 0: mean 1/3, unbiased std sqrt(1/3)
    std = (1 / 3) ** 0.5
    assert a[0].item() == pytest.approx((1 - 1 / 3) / (std + 1e-6), rel=1e-5)
    assert a[1].item() == pytest.approx((0 - 1 / 3) / (std + 1e-6), rel=1e-5)
    assert a[3].item() == 0.0 and a[4].item() == 0.0  # all equal -> 0
    assert a[5].item() == 0.0  # a group of one


def test_grpo_interleaved_groups_match_contiguous():
    r = torch.tensor([0.3, 0.9, 0.1, 0.5])
    a1 = compute_advantages("grpo", r, torch.tensor([0, 1, 0, 1]))
    a2 = compute_advantages("grpo", r[[0, 2, 1, 3]], torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(a1[[0, 2, 1, 3]], a2)


def test_dr_grpo_and_rloo_hand_values():
    r = torch.tensor([1.0, 0.0, 0.0, 0.5])
    g = torch.zeros(4, dtype=torch.long)
    assert torch.allclose(
        compute_advantages("dr_grpo", r, g), torch.tensor([0.625, -0.375, -0.375, 0.125])
    )
    # rloo: r_j - mean of the other three
    expect = torch.tensor([1 - 0.5 / 3, 0 - 1.5 / 3, 0 - 1.5 / 3, 0.5 - 1 / 3])
    assert torch.allclose(compute_advantages("rloo", r, g), expect)


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError, match="dr_grpo, grpo, rloo"):
        compute_advantages("ppo", torch.zeros(2), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    "bad, err",
    [
        (dict(rewards=torch.zeros(2, 2)), ValueError),
        (dict(group_ids=torch.zeros(3, dtype=torch.long)), ValueError),
        (dict(group_ids=torch.zeros(2)), TypeError),
        (dict(rewards=torch.tensor([0.0, float("nan")])), ValueError),
    ],
)
def test_advantage_bad_input(bad, err):
    kw = dict(rewards=torch.zeros(2), group_ids=torch.zeros(2, dtype=torch.long))
    kw.update(bad)
    with pytest.raises(err):
        compute_advantages("grpo", **kw)


MASK = torch.tensor(
    [
        [1, 1, 1, 0],  # 3 tokens
        [1, 0, 0, 0],  # 1 token
        [0, 0, 0, 0],  # no token: does not count as a sequence
    ],
    dtype=torch.bool,
)


def test_token_mean_hand_count():
    w = aggregation_weights(MASK, "token-mean")
    assert torch.allclose(w[0, :3], torch.full((3,), 1 / 4)) and w[0, 3] == 0
    assert w.sum().item() == pytest.approx(1.0)


def test_seq_mean_token_mean_hand_count():
    w = aggregation_weights(MASK, "seq-mean-token-mean")
    assert w[0, 0].item() == pytest.approx(1 / (2 * 3))
    assert w[1, 0].item() == pytest.approx(1 / (2 * 1))
    assert w[2].sum() == 0


def test_seq_mean_token_sum_hand_count():
    w = aggregation_weights(MASK, "seq-mean-token-sum")
    assert torch.allclose(w[MASK], torch.full((4,), 0.5))


def test_seq_mean_token_sum_norm_hand_count():
    w = aggregation_weights(MASK, "seq-mean-token-sum-norm")
    assert torch.allclose(w[MASK], torch.full((4,), 1 / (2 * 4)))
    w = aggregation_weights(MASK, "seq-mean-token-sum-norm", max_response_len=10)
    assert torch.allclose(w[MASK], torch.full((4,), 1 / (2 * 10)))


def test_global_counts_override_local_ones():
    w = aggregation_weights(MASK, "token-mean", num_tokens=8)
    assert w[0, 0].item() == pytest.approx(1 / 8)
    w = aggregation_weights(MASK, "seq-mean-token-sum", num_seqs=4)
    assert w[1, 0].item() == pytest.approx(1 / 4)


def test_every_mode_is_covered():
    assert set(AGG_MODES) == {
        "token-mean",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    }
    with pytest.raises(ValueError, match="valid modes: token-mean"):
        aggregation_weights(MASK, "sum")


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_closed_form_gradients(name):
    lp = torch.linspace(-5, -0.1, 11, dtype=torch.float64, requires_grad=True)
    ref = torch.linspace(-3, -0.5, 11, dtype=torch.float64)
    k, dk = KL_TERMS.get(name)(lp, ref)
    (auto,) = torch.autograd.grad(k.sum(), lp)
    assert torch.allclose(dk, auto)


@pytest.mark.parametrize(
    "bad",
    [
        dict(clip_low=1.5),
        dict(beta=-1),
        dict(kl_estimator="k4"),
        dict(loss_agg="x"),
        dict(temperature=0),
        dict(clip_ratio_c=0.5),
    ],
)
def test_loss_config_rejects_bad_values(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name if name != "loss_agg" else "loss_agg"):
        LossConfig(**bad)


def test_token_roles_hand_split():
    from rgpo_fast.algos.aggregation import token_roles

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    hint = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    active, sft, policy = token_roles(mask, hint, torch.tensor([False, True]))
    assert active.tolist() == [[1, 0, 1, 0], [1, 1, 1, 1]]
    assert sft.tolist() == [[0, 0, 0, 0], [1, 1, 1, 1]]
    assert policy.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]
    _, sft_none, policy_all = token_roles(mask)
    assert not sft_none.any() and torch.equal(policy_all, mask)
