"""The C++ extension rgpo_fast._C: op registration (torch.library, fake kernels, tracing),
input checks, the per-token loss against its Python specification, the accuracy of the
vectorised exp, the bf16 packing helper, and the fallback when the extension is missing.

Numerical agreement of impl="cpp" with the oracle is tested by the shared backend tests
(tests/test_linear_logprob.py, tests/test_policy_loss.py), parametrised over every backend.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from rgpo_fast.algos.policy_loss import LossConfig, TokenTerms, token_loss_and_grad
from rgpo_fast.ops import cpp_backend, cuda_backend, torch_chunked
from rgpo_fast.ops.truncation import truncation_thresholds

HAS_CPP = cpp_backend.is_available(torch.device("cpu"))
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="rgpo_fast._C not built (see docs/csrc.md)")
OPS = ("logprob_forward", "logprob_backward", "token_loss", "policy_loss_forward_backward",
       "pack_bf16")  # fmt: skip


def _linear(n=37, h=16, v=203, dtype=torch.float32, bias=False):
    hidden = torch.randn(n, h, dtype=torch.float32).to(dtype)
    weight = (torch.randn(v, h) * 0.5).to(dtype)
    b = torch.randn(v).to(dtype) if bias else None
    targets = torch.randint(0, v, (n,))
    return hidden, weight, b, targets


def _terms(n, logp, *, old=True, ref=True, off=True, rollout=True, sft=True):
    policy = torch.rand(n) > 0.15
    sft_w = torch.where(~policy & (torch.rand(n) > 0.3), 0.01, 0.0) if sft else torch.zeros(n)
    noisy = lambda s: (logp + s * torch.randn(n)).float()  # noqa: E731
    return TokenTerms(
        advantages=torch.randn(n),
        pg_weight=policy.float() / max(int(policy.sum()), 1),
        sft_weight=sft_w,
        policy=policy,
        offpolicy=(torch.rand(n) > 0.7) if off else None,
        old_logprobs=noisy(0.4) if old else None,
        ref_logprobs=noisy(2.0) if ref else None,
        rollout_logprobs=noisy(0.3) if rollout else None,
    )


@needs_cpp
def test_ops_are_registered_under_torch_ops():
    for name in OPS:
        op = getattr(torch.ops.rgpo_fast, name)
        assert op.default._schema.name == f"rgpo_fast::{name}"


@needs_cpp
def test_opcheck_fake_kernels_and_schemas():
    h, w, b, t = _linear(bias=True)
    n = h.shape[0]
    ops = torch.ops.rgpo_fast
    logp, lse, ent = ops.logprob_forward(h, w, b, t, 0.8, True, 16)
    thr = truncation_thresholds(h, w, b, 0.8, 0.7, 0)
    _, lse_thr, ent_thr = ops.logprob_forward(h, w, b, t, 0.8, True, 16, thr)
    g = torch.randn(n)
    terms = _terms(n, logp)
    tensors, scalars = cpp_backend.loss_args(terms, LossConfig(beta=0.1, clip_ratio_c=3.0))
    cases = [
        (ops.logprob_forward.default, (h, w, b, t, 0.8, True, 16)),
        (ops.logprob_forward.default, (h, w, None, t, 1.0, False, 0)),
        (ops.logprob_backward.default, (h, w, b, t, lse, ent, 0.8, g, g, True, True, True, 16)),
        (ops.logprob_backward.default, (h, w, None, t, lse, None, 1.0, g, None, True, False,
                                        False, 0)),  # fmt: skip
        # a truncated sampler's per-row thresholds (the optional last argument)
        (ops.logprob_forward.default, (h, w, b, t, 0.8, True, 16, thr)),
        (ops.logprob_backward.default, (h, w, b, t, lse_thr, ent_thr, 0.8, g, g, True, True,
                                        True, 16, thr)),  # fmt: skip
        (ops.token_loss.default, (logp, *tensors, ent, *scalars)),
        (ops.policy_loss_forward_backward.default,
         (h, w, b, t, *tensors, *scalars, 0.8, True, True, True, True, 16)),
        (ops.pack_bf16.default, ([w, h.double()], [0, w.numel()], w.numel() + h.numel())),
    ]  # fmt: skip
    for op, args in cases:
        torch.library.opcheck(op, args)


@needs_cpp
def test_traces_under_torch_compile_fullgraph():
    h, w, _, t = _linear()

    def f(h, w, t):
        logp, lse, ent = torch.ops.rgpo_fast.logprob_forward(h, w, None, t, 1.0, True, 8)
        return (logp * 2).sum() + ent.mean() + lse.max()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(h, w, t), f(h, w, t))


@needs_cpp
@pytest.mark.parametrize("kl", ["k1", "k2", "k3"])
@pytest.mark.parametrize("variant", ["all", "on-policy", "no-ref", "dual", "entropy"])
def test_cpp_token_loss_matches_python_spec(kl, variant):
    n = 301
    logp = -torch.rand(n) * 6
    # Extreme gaps exercise the +-20 log-ratio clamp and the k3 clamp.
    logp[:5] = torch.tensor([-30.0, -0.0, -25.0, -1e-4, -12.0])
    kw = {"old": variant != "on-policy", "ref": variant != "no-ref"}
    terms = _terms(n, logp, **kw)
    if kw["old"]:
        terms.old_logprobs[:3] = torch.tensor([-1.0, -29.0, -2.0])
    cfg = LossConfig(beta=0.0 if variant == "no-ref" else 0.05, kl_estimator=kl,
                     clip_ratio_c=3.0 if variant == "dual" else None, clip_high=0.28)  # fmt: skip
    ent = torch.rand(n) * 3 if variant == "entropy" else None
    want = token_loss_and_grad(logp, terms, cfg, ent)
    got = cpp_backend.token_loss_and_grad(logp, terms, cfg, ent)
    for a, b, what in zip(got, want, ("loss", "grad", "stats")):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6, msg=what)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_policy_loss_matches_torch_backend(dtype, bias):
    """Same semantics as the chunked PyTorch backend, chunk edges included (chunk 7, N 37)."""
    h, w, b, t = _linear(dtype=dtype, bias=bias)
    n = h.shape[0]
    logp = torch_chunked.logprob_forward(h, w, b, t, 0.7, False, None)[0]
    terms = _terms(n, logp)
    cfg = LossConfig(beta=0.1, clip_ratio_c=3.0, temperature=0.7)
    needs = (True, True, bias)
    got = cpp_backend.policy_loss_forward_backward(h, w, b, t, terms, cfg, needs, True, 7)
    want = torch_chunked.policy_loss_forward_backward(h, w, b, t, terms, cfg, needs, True, 7)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-3}
    for a, e in zip(got, want):
        if e is None:
            assert a is None
            continue
        assert a.dtype == e.dtype and a.shape == e.shape
        torch.testing.assert_close(a.float(), e.float(), **tol)


@needs_cpp
def test_vectorised_exp_accuracy_through_softmax_gradient():
    """The row kernels' polynomial exp: p_k recovered from the log-prob backward.

    One token, H = 1, weight column = logits x_k on a dense grid down to -80 (below exp's
    clamp region), g_logp = -1: then dweight_k = p_k = exp(x_k - lse) for k != target.
    """
    x = torch.linspace(-80.0, 0.0, 40001)
    w = x[:, None].contiguous()
    h = torch.ones(1, 1)
    t = torch.tensor([x.numel() - 1])
    _, lse, _ = cpp_backend.logprob_forward(h, w, None, t, 1.0, False, None)
    g = -torch.ones(1)
    _, dw, _ = cpp_backend.logprob_backward(h, w, None, t, lse, None, 1.0, g, None,
                                            (False, True, False), None)  # fmt: skip
    lp = (x.double() - lse.double())[:-1]
    p = dw[:-1, 0].double()
    rel = (p - lp.exp()).abs() / lp.exp()
    # exp's own error (<= 2 ulp) plus the fp32 rounding of its argument x - lse (|lp| ulp).
    bound = 2.5e-7 + 1.2e-7 * lp.abs()
    assert bool((rel <= bound).all()), f"max rel err {rel.max():.3g} at lp={lp[rel.argmax()]:.3f}"


@needs_cpp
def test_input_checks_raise_clear_errors():
    h, w, b, t = _linear()
    ops = torch.ops.rgpo_fast
    with pytest.raises(RuntimeError, match="disagree on H"):
        ops.logprob_forward(h, w[:, :5], None, t, 1.0, False, 0)
    with pytest.raises(RuntimeError, match="weight dtype"):
        ops.logprob_forward(h, w.double(), None, t, 1.0, False, 0)
    with pytest.raises(RuntimeError, match="targets must be in"):
        ops.logprob_forward(h, w, None, t + w.shape[0], 1.0, False, 0)
    with pytest.raises(RuntimeError, match="targets must be int64"):
        ops.logprob_forward(h, w, None, t.int(), 1.0, False, 0)
    with pytest.raises(RuntimeError, match="temperature"):
        ops.logprob_forward(h, w, None, t, 0.0, False, 0)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        ops.logprob_forward(h, w, torch.zeros(3), t, 1.0, False, 0)
    n = h.shape[0]
    with pytest.raises(RuntimeError, match="threshold must have shape"):
        ops.logprob_forward(h, w, None, t, 1.0, False, 0, torch.zeros(n + 1))
    with pytest.raises(RuntimeError, match="threshold must be Float"):
        ops.logprob_forward(h, w, None, t, 1.0, False, 0, torch.zeros(n, dtype=torch.float64))
    lse = torch.zeros(n)
    with pytest.raises(RuntimeError, match="g_logp must have shape"):
        ops.logprob_backward(h, w, None, t, lse, None, 1.0, torch.zeros(n + 1), None, True,
                             True, False, 0)  # fmt: skip
    terms = _terms(n, torch.zeros(n))
    tensors, scalars = cpp_backend.loss_args(terms, LossConfig())
    bad = list(scalars)
    bad[4] = 7  # kl_estimator index
    with pytest.raises(RuntimeError, match="kl_estimator"):
        ops.token_loss(torch.zeros(n), *tensors, None, *bad)
    with pytest.raises(RuntimeError, match="policy must be Bool"):
        ops.token_loss(torch.zeros(n), *tensors[:3], tensors[3].float(), *tensors[4:], None,
                       *scalars)  # fmt: skip


def test_pack_params_bf16_cpu_fallback_offsets_and_values():
    ts = [torch.randn(3, 5), torch.randn(7).to(torch.float16), torch.randn(2, 2, 2).bfloat16(),
          torch.randn(1)]  # fmt: skip
    buf, offsets = cuda_backend.pack_params_bf16(ts)
    # Each start is 8-aligned (16 bytes of bf16); the buffer ends at the last tensor.
    assert offsets == [0, 16, 24, 32]
    assert buf.dtype == torch.bfloat16 and buf.shape == (33,)
    for t, v in zip(ts, cuda_backend.unpack_views(buf, offsets, [t.shape for t in ts])):
        assert torch.equal(v, t.to(torch.bfloat16))
    assert not buf[15:16].any() and not buf[23:24].any()  # zero padding
    assert cuda_backend.pack_offsets([8, 8, 1], align=8) == ([0, 8, 16], 17)
    assert cuda_backend.pack_offsets([3, 3], align=1) == ([0, 3], 6)
    if HAS_CPP:  # the C++ CPU op gives the same buffer as the Python fallback
        op = torch.ops.rgpo_fast.pack_bf16(ts, offsets, buf.numel())
        assert torch.equal(op, buf)
    with pytest.raises(TypeError, match="packs floats"):
        cuda_backend.pack_params_bf16([torch.ones(2, dtype=torch.int64)])


def test_missing_extension_falls_back_with_one_notice():
    """RGPO_FAST_SKIP_CPP_BUILD=1 leaves no rgpo_fast._C: simulated by blocking the import."""
    code = textwrap.dedent("""
        import sys
        sys.modules["rgpo_fast._C"] = None  # import of the extension now raises ImportError
        import torch
        import rgpo_fast
        from rgpo_fast.ops.backends import available_backends, resolve_backend
        assert "cpp" not in available_backends("cpu"), available_backends("cpu")
        assert resolve_backend("auto", torch.device("cpu")).NAME == "torch"
        h, w = torch.randn(6, 4, requires_grad=True), torch.randn(11, 4)
        logp, _ = rgpo_fast.fused_linear_logprobs(h, w, torch.randint(0, 11, (6,)))
        logp.sum().backward()
        available_backends("cpu")  # a second query: no second notice
        try:
            resolve_backend("cpp", torch.device("cpu"))
        except RuntimeError as e:
            print("ERR", e)
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout and "ERR impl='cpp' cannot run" in proc.stdout, proc.stdout
    notices = [ln for ln in proc.stderr.splitlines() if "C++ extension" in ln]
    assert len(notices) == 1, proc.stderr
    assert "using the PyTorch path" in notices[0]
