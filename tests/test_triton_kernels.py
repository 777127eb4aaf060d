"""Kernel-level tests of kernels/linear_logprob.py and kernels/policy_loss.py.

Without a GPU these run under the Triton interpreter (conftest.py sets TRITON_INTERPRET=1
before anything imports triton). bf16 / fp16 note: under the interpreter of triton 3.9,
`tl.dot` on bf16 operands returns garbage (docs/kernels.md), so the launchers set the constexpr
UPCAST_DOT, which casts the dot operands to fp32 first (exact products, fp32 accumulation:
what a tensor-core MMA computes). The 16-bit cases below therefore test the kernels' bf16
loads, fp32 softmax and bf16 gradient stores, with that upcast in the matmuls; on a GPU the
same tests run with UPCAST_DOT off.

Accuracy follows the three-way rule of tests/tolerance.py: error vs a float64 ground truth
at most twice the error of naive PyTorch in the same dtype, plus a small slack.
"""

import pytest
import torch
from logprob_oracle import DEV, logprob_inputs, oracle_grads
from tolerance import assert_three_way

from rgpo_fast.algos.policy_loss import STAT_NAMES, LossConfig, TokenTerms, token_loss_and_grad
from rgpo_fast.ops import torch_chunked
from rgpo_fast.ops.backends import available_backends, resolve_backend
from rgpo_fast.oracle import naive_logprobs

pytestmark = pytest.mark.skipif(
    "triton" not in available_backends(DEV), reason="triton backend unavailable here"
)

if "triton" in available_backends(DEV):
    from rgpo_fast.kernels import linear_logprob as klp
    from rgpo_fast.kernels import policy_loss as kpl
    from rgpo_fast.ops import triton_backend

# Small blocks so that the ragged shapes below leave partial tiles in every dimension:
# N = 37 -> 3 token blocks (last has 5 rows), V = 101 -> 4 vocab tiles (last 5 columns),
# H = 29 -> 2 K-steps (last 13 wide); GROUP_N = 2 makes the grouped order wrap mid-grid.
SMALL = {"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_H": 16, "GROUP_N": 2}


@pytest.mark.parametrize(
    "dtype, splits, bias, temperature",
    [
        (torch.float32, 1, True, 0.7),
        (torch.float32, 3, False, 1.0),  # vocab splits + combine kernel
        (torch.bfloat16, 2, True, 1.3),
        (torch.float16, 1, True, 1.0),
    ],
)
def test_linear_logprob_tile_edges_three_way(dtype, splits, bias, temperature):
    N, H, V = 37, 29, 101
    h, w, b, t = logprob_inputs(N, H, V, dtype, bias)
    g_logp = torch.linspace(-1, 1, N, device=DEV)
    g_ent = torch.linspace(0.5, -0.25, N, device=DEV)
    logp, lse, ent = klp.linear_logprob_forward(
        h, w, b, t, temperature, True, blocks=SMALL, num_splits=splits
    )
    dh, dw, db = klp.linear_logprob_backward(
        h, w, b, t, lse, ent, temperature, g_logp, g_ent, (True, True, bias), blocks=SMALL
    )
    got = [logp, ent, dh, dw, db]
    naive = oracle_grads(h, w, b, t, temperature, g_logp, g_ent, torch.float32, upcast=False)
    truth = oracle_grads(h, w, b, t, temperature, g_logp, g_ent, torch.float64, upcast=True)
    names = ["logp", "entropy", "dhidden", "dweight", "dbias"]
    for name, x, xn, xt in zip(names, got, naive, truth):
        if xt is None:
            assert x is None, name
            continue
        if name in ("dhidden", "dweight", "dbias"):
            assert x.dtype == dtype, f"{name} must come back in the input dtype"
        assert_three_way(name, x, xn, xt, dtype)
    # lse is what the backward relies on: check it directly in fp64.
    z = (h.double() @ w.double().T + (b.double() if bias else 0)) / temperature
    assert torch.allclose(lse.double(), torch.logsumexp(z, -1), atol=TOL_LSE[dtype])


TOL_LSE = {torch.float32: 1e-5, torch.bfloat16: 1e-4, torch.float16: 1e-4}


def test_splits_do_not_change_the_forward():
    """Every split count gives the same logp/entropy (up to fp32 rounding): the combine
    kernel's rescaling of (max, sum, entropy sum) is exact maths."""
    h, w, b, t = logprob_inputs(21, 24, 250, torch.float32)
    ref = klp.linear_logprob_forward(h, w, b, t, 1.0, True, blocks=SMALL, num_splits=1)
    for s in (2, 5, 8):  # 8 splits of 32 columns: the last ones are short
        out = klp.linear_logprob_forward(h, w, b, t, 1.0, True, blocks=SMALL, num_splits=s)
        for a, r in zip(out, ref):
            assert torch.allclose(a, r, atol=2e-6), s


def test_strided_hidden_int32_targets_and_partial_needs():
    """Non-contiguous hidden (a column slice), int32 targets, only some gradients asked."""
    N, H, V = 19, 23, 70
    big, w, b, t = logprob_inputs(N, H + 5, V, torch.float32)
    h = big[:, 2 : 2 + H]  # stride (H + 5, 1)
    w = w[:, 2 : 2 + H].contiguous()
    assert not h.is_contiguous()
    g = torch.randn(N, device=DEV)
    logp, lse, ent = klp.linear_logprob_forward(h, w, b, t.int(), 1.0, False, blocks=SMALL)
    assert ent is None
    ref_lp, ref_lse, _ = torch_chunked.logprob_forward(h, w, b, t, 1.0, False)
    assert torch.allclose(logp, ref_lp, atol=1e-5) and torch.allclose(lse, ref_lse, atol=1e-5)
    ref = torch_chunked.logprob_backward(h, w, b, t, ref_lse, None, 1.0, g, None,
                                         (True, True, True))  # fmt: skip
    for needs in [(True, False, False), (False, True, True)]:
        out = klp.linear_logprob_backward(h, w, b, t.int(), lse, None, 1.0, g, None, needs,
                                          blocks=SMALL)  # fmt: skip
        for got, r, need in zip(out, ref, needs):
            if need:
                assert torch.allclose(got, r, atol=1e-5)
            else:
                assert got is None


def test_large_logits_do_not_overflow():
    """Logits of order 1e3: exp would overflow without the running max."""
    h, w, b, t = logprob_inputs(33, 16, 90, torch.float32, scale=60.0)
    logp, lse, ent = klp.linear_logprob_forward(h, w, b, t, 1.0, True, blocks=SMALL,
                                                num_splits=3)  # fmt: skip
    ref_lp, ref_ent = naive_logprobs(h.double(), w.double(), t, b.double(), 1.0, True,
                                     torch.float64)  # fmt: skip
    assert float(lse.abs().max()) > 300  # the case really is extreme
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    assert torch.allclose(logp.double(), ref_lp, atol=1e-3)
    assert torch.allclose(ent.double(), ref_ent, atol=1e-3)


def test_empty_batch():
    h, w, b, t = logprob_inputs(0, 8, 20, torch.float32)
    logp, lse, ent = klp.linear_logprob_forward(h, w, b, t, 1.0, True)
    assert logp.shape == (0,) and ent.shape == (0,)
    dh, dw, db = klp.linear_logprob_backward(h, w, b, t, lse, None, 1.0, logp, None,
                                             (True, True, True))  # fmt: skip
    assert dh.shape == (0, 8) and float(dw.abs().sum()) == 0 and float(db.abs().sum()) == 0


def test_interpreter_upcast_flag():
    """The bf16 tl.dot trap (docs/kernels.md): 16-bit inputs get UPCAST_DOT exactly when the
    interpreter runs the kernels; fp32 inputs use IEEE fp32 products (no TF32)."""
    interp = klp.interpreting()
    assert klp._dot_flags(torch.bfloat16)["UPCAST_DOT"] is interp
    assert klp._dot_flags(torch.float16)["UPCAST_DOT"] is interp
    assert klp._dot_flags(torch.float32) == {"UPCAST_DOT": False, "DOT_PRECISION": "ieee"}


def test_availability_rules(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_backend.is_available(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_backend.is_available(torch.device("cpu"))
    assert triton_backend.is_available(torch.device("cuda")) == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert resolve_backend("auto", torch.device("cpu")).NAME != "triton"


# ---------------------------------------------------------------------------------------
# Policy-loss kernel vs algos.policy_loss.token_loss_and_grad, flag by flag.
# ---------------------------------------------------------------------------------------
N_TOK = 300  # with block=128: three programs, the last one partial


def _terms(seed=0, n=N_TOK):
    g = torch.Generator().manual_seed(seed)
    logp = -3 * torch.rand(n, generator=g)
    policy = torch.rand(n, generator=g) < 0.8
    sft = ~policy & (torch.rand(n, generator=g) < 0.7)  # some tokens are neither (weight 0)
    old = logp + 0.6 * torch.randn(n, generator=g)
    old[:4] = logp[:4] + torch.tensor([25.0, -25.0, 19.9, -30.0])  # log-ratio clamp edges
    ref = logp + 0.5 * torch.randn(n, generator=g)
    ref[4:7] = logp[4:7] + torch.tensor([4.0, 6.0, -20.0])  # k3 beyond its clamp
    adv = torch.randn(n, generator=g)
    adv[7] = 0.0
    full = dict(
        logp=logp,
        terms=TokenTerms(
            advantages=adv,
            pg_weight=torch.where(policy, torch.rand(n, generator=g), 0.0),
            sft_weight=torch.where(sft, 0.01, 0.0),
            policy=policy,
            offpolicy=torch.rand(n, generator=g) < 0.3,
            old_logprobs=old,
            ref_logprobs=ref,
            rollout_logprobs=old + 0.8 * torch.randn(n, generator=g),
        ),
        entropy=3 * torch.rand(n, generator=g),
    )
    return full


LOSS_CASES = {
    # name: (which optional inputs are present, LossConfig kwargs)
    "on-policy": ((), {}),
    "old": (("old",), {}),
    "old+dual": (("old",), {"clip_ratio_c": 3.0, "clip_high": 0.28}),
    "k1": (("old", "ref"), {"beta": 0.1, "kl_estimator": "k1"}),
    "k2": (("ref",), {"beta": 0.2, "kl_estimator": "k2"}),
    "k3": (("old", "ref"), {"beta": 0.05, "kl_estimator": "k3"}),
    "ref but beta 0": (("old", "ref"), {"beta": 0.0}),
    "luffy": (("old", "off"), {"luffy_gamma": 0.1}),
    "luffy on-policy": (("off",), {"luffy_gamma": 0.5}),
    "tis": (("old", "rollout"), {"tis_cap": 2.0}),
    "tis without old": (("rollout",), {"tis_cap": 1.5}),
    "entropy stat": (("old", "entropy"), {}),
    "everything": (("old", "ref", "off", "rollout", "entropy"),
                   {"clip_ratio_c": 2.5, "beta": 0.1, "kl_estimator": "k3"}),  # fmt: skip
}


def _select(full, present):
    t = full["terms"]
    terms = TokenTerms(
        advantages=t.advantages, pg_weight=t.pg_weight, sft_weight=t.sft_weight,
        policy=t.policy,
        offpolicy=t.offpolicy if "off" in present else None,
        old_logprobs=t.old_logprobs if "old" in present else None,
        ref_logprobs=t.ref_logprobs if "ref" in present else None,
        rollout_logprobs=t.rollout_logprobs if "rollout" in present else None,
    )  # fmt: skip
    ent = full["entropy"] if "entropy" in present else None
    return terms, ent


def _to(terms: TokenTerms, dev):
    def m(x):
        return None if x is None else x.to(dev)

    return TokenTerms(*(m(getattr(terms, f)) for f in (
        "advantages", "pg_weight", "sft_weight", "policy", "offpolicy", "old_logprobs",
        "ref_logprobs", "rollout_logprobs")))  # fmt: skip


@pytest.mark.parametrize("case", list(LOSS_CASES), ids=list(LOSS_CASES))
def test_policy_loss_kernel_matches_token_loss_and_grad(case):
    present, cfg_kw = LOSS_CASES[case]
    full = _terms()
    terms, ent = _select(full, present)
    cfg = LossConfig(**cfg_kw)
    loss_t, grad_ref, stats_ref = token_loss_and_grad(full["logp"], terms, cfg, ent)
    dt = _to(terms, DEV)
    loss, stats, grad = kpl.policy_loss_forward_backward(
        full["logp"].to(DEV), dt, cfg, None if ent is None else ent.to(DEV), block=128
    )
    assert grad.shape == (N_TOK,) and stats.shape == (len(STAT_NAMES),)
    assert torch.allclose(grad.cpu(), grad_ref, rtol=1e-5, atol=1e-6), case
    assert torch.allclose(loss.cpu(), loss_t.sum(), rtol=1e-5, atol=1e-5), case
    for i, name in enumerate(STAT_NAMES):
        if name.startswith("n_"):  # counts are exact
            assert stats[i].item() == stats_ref[i].item(), (case, name)
        else:
            assert stats[i].item() == pytest.approx(stats_ref[i].item(), rel=1e-5, abs=1e-5), (
                case, name)  # fmt: skip


def test_loss_cases_hit_every_branch():
    """The shared token set really exercises clipping on both sides, dual clip and TIS cap."""
    full = _terms()
    terms, _ = _select(full, ("old", "rollout"))
    _, _, st = token_loss_and_grad(full["logp"], terms, LossConfig(clip_ratio_c=3.0))
    s = dict(zip(STAT_NAMES, st.tolist()))
    assert s["n_clip_low"] > 0 and s["n_clip_high"] > 0 and s["n_dual_clip"] > 0
    tis = torch.exp(terms.old_logprobs - terms.rollout_logprobs)
    assert bool((tis[terms.policy] > 2.0).any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_policy_loss_chain_matches_torch_backend(dtype):
    """triton_backend.policy_loss_forward_backward (fwd kernel -> loss kernel -> bwd kernel)
    against torch_chunked's single-sweep version, entropy stat included."""
    N, H, V = 45, 27, 131
    h, w, b, t = logprob_inputs(N, H, V, dtype)
    full = _terms(seed=3, n=N)
    terms, _ = _select(full, ("old", "ref", "off", "rollout"))
    # Old log-probs near the model's own, so that the ratios are realistic.
    lp, _ = naive_logprobs(h.float(), w.float(), t, b.float(), 0.9)
    terms.old_logprobs = (lp.cpu() + 0.5 * torch.randn(N)).contiguous()
    terms.ref_logprobs = (lp.cpu() + 0.3 * torch.randn(N)).contiguous()
    terms = _to(terms, DEV)
    cfg = LossConfig(clip_ratio_c=3.0, beta=0.1, kl_estimator="k2", temperature=0.9)
    needs = (True, True, True)
    got = triton_backend.policy_loss_forward_backward(h, w, b, t, terms, cfg, needs, True)
    ref = torch_chunked.policy_loss_forward_backward(h.double(), w.double(), b.double(), t,
                                                     terms, cfg, needs, True)  # fmt: skip
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    for name, x, r in zip(["loss", "stats", "dh", "dw", "db"], got, ref):
        scale = r.abs().max().item() + 1e-3
        err = (x.double() - r.double()).abs().max().item() / scale
        assert err < tol, f"{name}: relative error {err:.3g}"
    assert got[1][STAT_NAMES.index("entropy_sum")] > 0
