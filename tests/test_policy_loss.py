"""fused_linear_policy_loss / FusedLinearRGPOLoss on every backend vs the naive oracle."""

import pytest
import torch
from tolerance import assert_three_way

from rgpo_fast import FusedLinearRGPOLoss, fused_linear_policy_loss
from rgpo_fast.algos.policy_loss import LossConfig, TokenTerms, token_loss_and_grad
from rgpo_fast.oracle import naive_logprobs, naive_policy_loss

B, T, H, V = 4, 31, 40, 507  # B * T = 124 tokens, ragged against every block size


def _batch(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g).to(dtype).requires_grad_()
    w = (0.3 * torch.randn(V, H, generator=g)).to(dtype).requires_grad_()
    b = (0.5 * torch.randn(V, generator=g)).to(dtype).requires_grad_()
    t = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, :5] = False  # prompt
    mask[1, 20:] = False  # padding after a short response
    mask[3, 9:] = False
    t[~mask] = -100  # HF-style padding targets outside the mask are allowed
    with torch.no_grad():
        t_safe = t.clamp(min=0)
        lp, _ = naive_logprobs(h.float(), w.float(), t_safe, b.float())
    # Old log-probs near the current ones, spread wide enough to hit both clip sides.
    old = lp + 0.6 * torch.randn(B, T, generator=g)
    ref = lp + 0.3 * torch.randn(B, T, generator=g)
    rollout = old + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    hint = torch.zeros(B, T, dtype=torch.bool)
    hint[2, 5:12] = True  # rationale tokens copied into the response
    return dict(
        hidden=h,
        weight=w,
        bias=b,
        targets=t,
        mask=mask,
        advantages=adv,
        old=old,
        ref=ref,
        rollout=rollout,
        hint=hint,
    )


# Each flag of docs/algorithms.md appears at least once; combinations chosen to stay fast under
# the Triton interpreter.
CASES = {
    "on-policy token-mean": dict(),
    "off-policy clip, k3, hint": dict(old=True, beta=0.1, kl_estimator="k3", hint=True),
    "dual clip, k1, seq-mean-token-mean": dict(
        old=True, clip_ratio_c=3.0, beta=0.05, kl_estimator="k1", loss_agg="seq-mean-token-mean"
    ),
    "clip-higher, k2, sft": dict(
        old=True,
        clip_high=0.28,
        beta=0.2,
        kl_estimator="k2",
        sft=True,
        loss_agg="seq-mean-token-sum",
    ),
    "luffy slot, dr-grpo norm": dict(old=True, off=True, loss_agg="seq-mean-token-sum-norm"),
    "tis, temperature, per-token adv": dict(
        old=True, rollout=True, temperature=0.8, token_adv=True, hint=True, sft=True
    ),
    # entropy bonus: the composed path (log-prob kernels with entropy both ways)
    "entropy bonus, clip, sft, tis": dict(
        old=True, entropy_coef=0.05, sft=True, rollout=True, hint=True
    ),
    "entropy bonus, k3, seq-mean-token-mean": dict(
        entropy_coef=0.2, beta=0.1, loss_agg="seq-mean-token-mean", temperature=0.7
    ),
    # sequence-level objectives and rollout correction (composed path / folded weights)
    "cispo, tis, sft": dict(old=True, objective="cispo", clip_low=1.0, clip_high=0.3,
                            rollout=True, sft=True, hint=True),
    "gspo, dual, k3, seq-mean-token-mean": dict(
        old=True, objective="gspo", clip_low=0.05, clip_high=0.08, clip_ratio_c=1.04,
        beta=0.1, loss_agg="seq-mean-token-mean", hint=True
    ),
    "gspo on-policy, token-mean, per-token adv, entropy": dict(
        objective="gspo", token_adv=True, entropy_coef=0.1, sft=True
    ),
    "seq truncate": dict(old=True, rollout=True, rollout_correction="seq_truncate",
                         tis_cap=1.03),
    "seq mask, gspo": dict(old=True, rollout=True, rollout_correction="seq_mask", tis_cap=1.03,
                           objective="gspo", clip_low=0.05, clip_high=0.05),
    # SAPO's sigmoid gate (composed path), its two temperatures on both advantage signs
    "sapo, tis, hint, per-token adv": dict(old=True, objective="sapo", rollout=True, hint=True,
                                           token_adv=True),
    "sapo taus, sft, seq-mean-token-mean": dict(
        old=True, objective="sapo", sapo_tau_pos=2.0, sapo_tau_neg=4.0, sft=True,
        loss_agg="seq-mean-token-mean"),
    # the token mask: a band narrow enough that the batch's rollout noise leaves it
    "token mask, k3, entropy": dict(old=True, rollout=True, rollout_correction="token_mask",
                                    token_mask_low=0.85, token_mask_high=1.2, beta=0.1,
                                    entropy_coef=0.05, loss_agg="seq-mean-token-mean"),
    "token mask, luffy slot, sft": dict(old=True, rollout=True, rollout_correction="token_mask",
                                        token_mask_low=0.85, token_mask_high=1.2, off=True,
                                        sft=True),
    # a truncated sampler's log-probs (per-row thresholds; every CPU backend, not csrc/cuda)
    "top-p, clip, sft, hint": dict(old=True, top_p=0.8, sft=True, hint=True),
    "top-k top-p, entropy, temperature": dict(old=True, top_k=20, top_p=0.9, temperature=0.7,
                                              entropy_coef=0.1),
}


def _kwargs(data, case):
    case = dict(case)
    kw = {}
    if case.pop("old", False):
        kw["old_logprobs"] = data["old"]
    if case.pop("rollout", False):
        kw["rollout_logprobs"] = data["rollout"]
    if case.get("beta", 0) > 0:
        kw["ref_logprobs"] = data["ref"]
    if case.pop("hint", False):
        kw["hint_mask"] = data["hint"]
    if case.pop("sft", False):
        kw["sft_mask"] = torch.tensor([False, True, False, False])
    if case.pop("off", False):
        kw["offpolicy_mask"] = torch.tensor([True, False, False, False])
    adv = data["advantages"]
    if case.pop("token_adv", False):
        adv = adv[:, None] * torch.linspace(0.5, 1.5, T)
    kw.update(case)
    return adv, kw


def _run(fn, data, params):
    for p in params:
        p.grad = None
    loss, extra = fn()
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in params], extra


def _oracle_runs(data, adv, kw):
    """[loss, dhidden, dweight, dbias] of naive PyTorch in the input dtype and of the
    float64 oracle (the three-way rule's yardstick and truth), and the oracle's per-token
    roles."""
    params = [data["hidden"], data["weight"], data["bias"]]
    args = (data["hidden"], data["weight"], data["targets"].clamp(min=0), data["mask"], adv)
    naive, _ = _run(lambda: naive_policy_loss(*args, bias=data["bias"], upcast=False, **kw),
                    data, params)  # fmt: skip
    truth, tok = _run(lambda: naive_policy_loss(*args, bias=data["bias"],
                                                compute_dtype=torch.float64, **kw),
                      data, params)  # fmt: skip
    return naive, truth, tok


# Every case in fp32; bf16 on two representative cases to keep the suite fast.
BF16_CASES = ("on-policy token-mean", "dual clip, k1, seq-mean-token-mean",
              "entropy bonus, k3, seq-mean-token-mean", "top-k top-p, entropy, temperature")
PARAMS = [pytest.param(c, torch.float32, id=f"{c}-fp32") for c in CASES] + [
    pytest.param(c, torch.bfloat16, id=f"{c}-bf16") for c in BF16_CASES
]


@pytest.mark.parametrize("case, dtype", PARAMS)
def test_matches_oracle_three_way(backend, case, dtype):
    data = _batch(dtype)
    adv, kw = _kwargs(data, CASES[case])
    params = [data["hidden"], data["weight"], data["bias"]]
    args = (data["hidden"], data["weight"], data["targets"], data["mask"], adv)
    got, metrics = _run(
        lambda: fused_linear_policy_loss(
            *args, bias=data["bias"], impl=backend, chunk_size=13, **kw
        ),
        data,
        params,
    )
    naive, truth, tok = _oracle_runs(data, adv, kw)
    for name, g, gn, gt in zip(["loss", "dhidden", "dweight", "dbias"], got, naive, truth):
        assert_three_way(f"{case}: {name}", g, gn, gt, dtype)
    # Metrics agree with per-token counts of the oracle.
    pol = tok["policy"]
    n_pol = pol.sum().item()
    assert metrics["tokens/policy"].item() == n_pol
    assert metrics["tokens/sft"].item() == tok["sft"].sum().item()
    assert metrics["tokens/masked"].item() == tok["masked"].sum().item()
    if kw.get("rollout_correction") == "token_mask":
        assert 0 < tok["masked"].sum().item() < tok["policy"].sum().item()  # the mask acts
    if dtype == torch.float32:
        assert metrics["clip_frac/low"].item() == pytest.approx(
            tok["clip_low"].sum().item() / n_pol
        )
        assert metrics["clip_frac/high"].item() == pytest.approx(
            tok["clip_high"].sum().item() / n_pol
        )


def test_clip_cases_are_exercised():
    """The shared batch really hits both clip sides (otherwise the tests above prove less)."""
    data = _batch(torch.float32)
    _, kw = _kwargs(data, CASES["dual clip, k1, seq-mean-token-mean"])
    _, m = fused_linear_policy_loss(
        data["hidden"],
        data["weight"],
        data["targets"],
        data["mask"],
        data["advantages"],
        bias=data["bias"],
        impl="torch",
        **kw,
    )
    assert m["clip_frac/low"] > 0 and m["clip_frac/high"] > 0 and m["clip_frac/dual"] > 0


def test_token_loss_grad_matches_autograd_of_its_loss():
    n = 64
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(n, generator=g, dtype=torch.float64) * 4
    terms = TokenTerms(
        advantages=torch.randn(n, generator=g, dtype=torch.float64),
        pg_weight=torch.rand(n, generator=g, dtype=torch.float64),
        sft_weight=torch.where(torch.arange(n) % 7 == 0, 0.01, 0.0).double(),
        policy=torch.arange(n) % 7 != 0,
        offpolicy=torch.arange(n) % 5 == 0,
        old_logprobs=lp + 0.5 * torch.randn(n, generator=g, dtype=torch.float64),
        ref_logprobs=lp + 0.5 * torch.randn(n, generator=g, dtype=torch.float64),
    )
    for est in ("k1", "k2", "k3"):
        cfg = LossConfig(clip_ratio_c=3.0, beta=0.1, kl_estimator=est)
        # The closed-form derivative against central finite differences in float64.
        _, grad, _ = token_loss_and_grad(lp, terms, cfg)
        eps = 1e-6
        lp_hi, _, _ = token_loss_and_grad(lp + eps, terms, cfg)
        lp_lo, _, _ = token_loss_and_grad(lp - eps, terms, cfg)
        fd = (lp_hi - lp_lo) / (2 * eps)
        assert torch.allclose(grad.double(), fd.double(), atol=1e-5), est


def test_global_normaliser_scales_the_loss():
    data = _batch(torch.float32)
    args = (data["hidden"], data["weight"], data["targets"], data["mask"], data["advantages"])
    loss1, m = fused_linear_policy_loss(*args, impl="torch")
    n = m["tokens/policy"].item()
    loss2, _ = fused_linear_policy_loss(*args, impl="torch", num_global_tokens=2 * n)
    assert loss2.item() == pytest.approx(loss1.item() / 2, rel=1e-5)


def test_module_equals_functional():
    data = _batch(torch.float32)
    args = (data["hidden"], data["weight"], data["targets"], data["mask"], data["advantages"])
    mod = FusedLinearRGPOLoss(clip_high=0.28, beta=0.1, loss_agg="seq-mean-token-mean")
    l1, _ = mod(*args, old_logprobs=data["old"], ref_logprobs=data["ref"])
    l2, _ = fused_linear_policy_loss(
        *args,
        old_logprobs=data["old"],
        ref_logprobs=data["ref"],
        clip_high=0.28,
        beta=0.1,
        loss_agg="seq-mean-token-mean",
    )
    assert torch.equal(l1, l2)
    assert "clip_high=0.28" in repr(mod)


def test_hint_tokens_receive_no_gradient():
    data = _batch(torch.float32)
    loss, _ = fused_linear_policy_loss(
        data["hidden"],
        data["weight"],
        data["targets"],
        data["mask"],
        data["advantages"],
        hint_mask=data["hint"],
        sft_mask=torch.ones(B, dtype=torch.bool),
        impl="torch",
    )
    loss.backward()
    gh = data["hidden"].grad
    assert gh[2, 5:12].abs().max() == 0  # hint tokens: neither policy gradient nor SFT
    assert gh[2, 12:].abs().max() > 0
    assert gh[:, :5].abs().max() == 0  # prompt tokens


def _bad(**change):
    data = _batch(torch.float32)
    kw = dict(
        hidden=data["hidden"],
        weight=data["weight"],
        targets=data["targets"],
        mask=data["mask"],
        advantages=data["advantages"],
    )
    kw.update(change)
    return kw


@pytest.mark.parametrize(
    "change, err, match",
    [
        (dict(mask=torch.ones(B, T + 1)), ValueError, r"mask must have shape \(4, 31\)"),
        (dict(mask=torch.full((B, T), 2)), ValueError, "mask must contain only 0 and 1"),
        (dict(hint_mask=torch.ones(B, 1)), ValueError, "hint_mask must have shape"),
        (dict(sft_mask=torch.ones(B + 1)), ValueError, "sft_mask must have shape"),
        (dict(advantages=torch.ones(B, T - 1)), ValueError, "advantages must have shape"),
        (dict(advantages=torch.tensor([0.0, float("nan"), 0.0, 0.0])), ValueError, "advantages"),
        (dict(old_logprobs=torch.zeros(B, T - 1)), ValueError, "old_logprobs must have shape"),
        (dict(old_logprobs=torch.full((B, T), float("inf"))), ValueError, "old_logprobs contains"),
        (dict(targets=torch.full((B, T), V)), ValueError, "targets must lie"),
        (dict(loss_agg="mean"), ValueError, "valid modes"),
        (dict(kl_estimator="k9"), ValueError, "kl_estimator"),
        (dict(clip_low=-0.1), ValueError, "clip_low"),
    ],
)
def test_bad_input_is_a_clear_error(change, err, match):
    kw = _bad(**change)
    with pytest.raises(err, match=match):
        fused_linear_policy_loss(
            kw.pop("hidden"),
            kw.pop("weight"),
            kw.pop("targets"),
            kw.pop("mask"),
            kw.pop("advantages"),
            impl="torch",
            **kw,
        )


def test_flat_hidden_is_rejected_with_a_clear_message():
    data = _batch(torch.float32)
    with pytest.raises(ValueError, match=r"\(B, T, H\)"):
        fused_linear_policy_loss(
            data["hidden"].reshape(B * T, H),
            data["weight"],
            data["targets"].reshape(-1),
            data["mask"].reshape(-1),
            data["advantages"],
        )
