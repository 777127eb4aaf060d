"""The naive oracle against float64 autograd (gradcheck) and hand-worked values."""

import math

import pytest
import torch

from rgpo_fast.oracle import naive_logprobs, naive_policy_loss

F64 = torch.float64


def test_logprobs_hand_values():
    # weight = identity, so the logits are the hidden state itself.
    h = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    w = torch.eye(2)
    logp, ent = naive_logprobs(h, w, torch.tensor([0, 1]), return_entropy=True)
    lse = math.log(math.exp(1) + math.exp(3))
    assert logp[0].item() == pytest.approx(1 - lse, rel=1e-6)
    assert logp[1].item() == pytest.approx(math.log(0.5), rel=1e-6)
    p = [math.exp(1 - lse), math.exp(3 - lse)]
    assert ent[0].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-6)
    assert ent[1].item() == pytest.approx(math.log(2), rel=1e-6)


def test_logprobs_temperature_and_bias_hand_values():
    h = torch.tensor([[2.0, 0.0]])
    w = torch.eye(2)
    b = torch.tensor([0.0, 2.0])
    logp, _ = naive_logprobs(h, w, torch.tensor([0]), bias=b, temperature=2.0)
    # logits (2, 2) / 2 = (1, 1) -> uniform
    assert logp.item() == pytest.approx(math.log(0.5), rel=1e-6)


def test_logprobs_gradcheck():
    h = torch.randn(5, 4, dtype=F64, requires_grad=True)
    w = torch.randn(7, 4, dtype=F64, requires_grad=True)
    b = torch.randn(7, dtype=F64, requires_grad=True)
    t = torch.randint(0, 7, (5,))

    def f(h, w, b):
        lp, ent = naive_logprobs(h, w, t, b, 0.7, True, compute_dtype=F64)
        return lp, ent

    assert torch.autograd.gradcheck(f, (h, w, b))


def _loss_inputs(B=3, T=5, H=4, V=6):
    h = torch.randn(B, T, H, dtype=F64, requires_grad=True)
    w = torch.randn(V, H, dtype=F64, requires_grad=True)
    t = torch.randint(0, V, (B, T))
    with torch.no_grad():
        lp, _ = naive_logprobs(h, w, t, compute_dtype=F64)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, -2:] = False
    return h, w, t, mask, lp


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(beta=0.1, kl_estimator="k1"),
        dict(beta=0.1, kl_estimator="k2"),
        dict(beta=0.1, kl_estimator="k3", loss_agg="seq-mean-token-mean"),
        dict(clip_ratio_c=3.0, loss_agg="seq-mean-token-sum-norm"),
        dict(loss_agg="seq-mean-token-sum", sft=True, off=True, hint=True),
    ],
)
def test_policy_loss_gradcheck(kw):
    kw = dict(kw)
    h, w, t, mask, lp = _loss_inputs()
    B, T = mask.shape
    # Old log-probs a little off the current ones: ratios spread around 1, away from the
    # clip kinks (gradcheck needs a differentiable point).
    old = lp + 0.05 * torch.randn(B, T, dtype=F64)
    extra = {}
    if kw.pop("sft", False):
        extra["sft_mask"] = torch.tensor([False, True, False])
    if kw.pop("off", False):
        extra["offpolicy_mask"] = torch.tensor([True, False, False])
    if kw.pop("hint", False):
        hm = torch.zeros(B, T, dtype=torch.bool)
        hm[2, :2] = True
        extra["hint_mask"] = hm
    adv = torch.randn(B, dtype=F64)
    ref = lp + 0.3 * torch.randn(B, T, dtype=F64)

    def f(h, w):
        loss, _ = naive_policy_loss(
            h, w, t, mask, adv, old_logprobs=old, ref_logprobs=ref, compute_dtype=F64, **kw, **extra
        )
        return loss

    assert torch.autograd.gradcheck(f, (h, w))


def _one_token(logp: float, **kw):
    """Loss of one token whose log-prob is exactly `logp` (V=2, weight = identity)."""
    # logits (x, 0) with target 0: logp = x - log(e^x + 1)  =>  x = log(p / (1 - p)).
    p = math.exp(logp)
    h = torch.tensor([[[math.log(p / (1 - p)), 0.0]]], dtype=F64, requires_grad=True)
    w = torch.eye(2, dtype=F64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, tok = naive_policy_loss(
        h, w, torch.zeros(1, 1, dtype=torch.long), mask, compute_dtype=F64, **kw
    )
    return loss, tok


def test_clip_high_hand_value():
    lp = math.log(0.3)
    old = torch.tensor([[lp - math.log(1.5)]], dtype=F64)  # ratio 1.5
    loss, tok = _one_token(lp, advantages=torch.tensor([1.0], dtype=F64), old_logprobs=old)
    assert tok["ratio"].item() == pytest.approx(1.5)
    assert loss.item() == pytest.approx(-1.2)  # max(-1.5, -1.2)
    assert tok["clip_high"].item()


def test_clip_low_and_dual_clip_hand_values():
    lp = math.log(0.3)
    old = torch.tensor([[lp - math.log(0.5)]], dtype=F64)  # ratio 0.5
    adv = torch.tensor([-2.0], dtype=F64)
    loss, tok = _one_token(lp, advantages=adv, old_logprobs=old)
    assert loss.item() == pytest.approx(2.0 * 0.8)  # max(1.0, 1.6)
    assert tok["clip_low"].item()
    old = torch.tensor([[lp - math.log(4.0)]], dtype=F64)  # ratio 4 > c = 3
    loss, _ = _one_token(lp, advantages=adv, old_logprobs=old, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(2.0 * 3.0)  # min(max(8, 2.4), 6)


@pytest.mark.parametrize(
    "est, expect",
    [("k1", lambda d: -d), ("k2", lambda d: d * d / 2), ("k3", lambda d: math.exp(d) - d - 1)],
)
def test_kl_hand_values(est, expect):
    lp = math.log(0.4)
    ref = math.log(0.2)
    loss, _ = _one_token(
        lp,
        advantages=torch.tensor([0.0], dtype=F64),
        ref_logprobs=torch.tensor([[ref]], dtype=F64),
        beta=0.5,
        kl_estimator=est,
    )
    assert loss.item() == pytest.approx(0.5 * expect(ref - lp), rel=1e-9)


def test_luffy_shaped_ratio_hand_value():
    loss, tok = _one_token(
        math.log(0.5),
        advantages=torch.tensor([1.0], dtype=F64),
        offpolicy_mask=torch.tensor([True]),
        luffy_gamma=0.1,
    )
    assert loss.item() == pytest.approx(-0.5 / 0.6)


def test_sft_token_mean_hand_value():
    # Two sequences; the second is a transferred sample: loss = A-term + coef * mean NLL.
    h = torch.zeros(2, 2, 2, dtype=F64)
    w = torch.eye(2, dtype=F64)  # all logits 0: every logp = log(1/2)
    t = torch.zeros(2, 2, dtype=torch.long)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    loss, tok = naive_policy_loss(
        h,
        w,
        t,
        mask,
        torch.tensor([0.0, 5.0], dtype=F64),
        sft_mask=torch.tensor([False, True]),
        sft_coef=0.01,
        compute_dtype=F64,
    )
    assert tok["sft"].sum().item() == 1 and tok["policy"].sum().item() == 2
    assert loss.item() == pytest.approx(0.01 * math.log(2))


def test_hint_tokens_get_no_gradient():
    h, w, t, mask, lp = _loss_inputs()
    hint = torch.zeros_like(mask)
    hint[1, :3] = True
    loss, _ = naive_policy_loss(
        h, w, t, mask, torch.randn(3, dtype=F64), hint_mask=hint, compute_dtype=F64
    )
    loss.backward()
    assert h.grad[1, :3].abs().max().item() == 0.0
    assert h.grad[1, 3:].abs().max().item() > 0.0
