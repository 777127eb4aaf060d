"""On a GPU: the CUDA backend (`impl="cuda"`, csrc/cuda/) and the CUDA `pack_bf16` kernel
against the same oracles as every CPU backend (the three-way rule of tests/tolerance.py:
the backend at most twice as wrong as naive PyTorch in the same dtype, against float64).
The oracle runs on the CPU; the backend's inputs are copies of the same tensors on the GPU.
Skipped without a CUDA GPU (conftest.py); `make gpu-check` runs them."""

import pytest
import torch
from test_policy_loss import CASES, PARAMS, _batch, _kwargs, _oracle_runs, _run
from tolerance import assert_three_way

from rgpo_fast import fused_linear_logprobs, fused_linear_policy_loss
from rgpo_fast.oracle import naive_logprobs

pytestmark = pytest.mark.gpu

N, H, V = 123, 40, 507  # ragged against every block size
DEVICE = "cuda"


def _cuda(x):
    """A GPU copy: a leaf that requires grad where `x` does."""
    if not isinstance(x, torch.Tensor):
        return x
    y = x.detach().to(DEVICE)
    return y.requires_grad_() if x.requires_grad else y


def _backward(out, params, weights):
    for p in params:
        p.grad = None
    (out * weights.to(out.device)).sum().backward()
    return [p.grad.detach().cpu().clone() for p in params]


@pytest.fixture
def cuda_impl():
    from rgpo_fast.ops.backends import available_backends

    if "cuda" not in available_backends("cuda"):
        pytest.fail("the CUDA backend is not available on this GPU machine: rgpo_fast._C_cuda "
                    "was not built (make install-gpu, or the gpu check's build stage)")
    return "cuda"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("entropy, bias, temperature", [(False, True, 0.7), (True, False, 1.0)])
def test_logprobs_forward_and_gradients(cuda_impl, dtype, entropy, bias, temperature):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, H, generator=g).to(dtype).requires_grad_()
    w = (0.3 * torch.randn(V, H, generator=g)).to(dtype).requires_grad_()
    b = (0.5 * torch.randn(V, generator=g)).to(dtype).requires_grad_() if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    params = [p for p in (h, w, b) if p is not None]
    weights = torch.linspace(-1, 1, N)

    def grads(run, ps):
        logp, ent = run()
        out = logp + (0.5 * ent if ent is not None else 0)
        return logp.detach().cpu(), (ent.detach().cpu() if ent is not None else None), \
            _backward(out, ps, weights)  # fmt: skip

    gp = [_cuda(p) for p in params]
    gb = gp[2] if bias else None
    got = grads(lambda: fused_linear_logprobs(gp[0], gp[1], _cuda(t), bias=gb,
                                              temperature=temperature, return_entropy=entropy,
                                              impl=cuda_impl), gp)  # fmt: skip
    naive = grads(lambda: naive_logprobs(h, w, t, b, temperature, entropy, torch.float32,
                                         upcast=False), params)  # fmt: skip
    truth = grads(lambda: naive_logprobs(h, w, t, b, temperature, entropy, torch.float64),
                  params)  # fmt: skip
    assert got[0].dtype == torch.float32
    assert_three_way("logp", got[0], naive[0], truth[0], dtype)
    if entropy:
        assert_three_way("entropy", got[1], naive[1], truth[1], dtype)
    for name, x, xn, xt in zip(["dhidden", "dweight", "dbias"], got[2], naive[2], truth[2]):
        assert x.dtype == dtype, name
        assert_three_way(name, x, xn, xt, dtype)


@pytest.mark.parametrize("case, dtype", PARAMS)
def test_policy_loss_and_gradients(cuda_impl, case, dtype):
    data = _batch(dtype)
    adv, kw = _kwargs(data, CASES[case])
    gp = [_cuda(p) for p in (data["hidden"], data["weight"], data["bias"])]
    gkw = {k: _cuda(v) for k, v in kw.items()}
    got, _ = _run(lambda: fused_linear_policy_loss(gp[0], gp[1], _cuda(data["targets"]),
                                                   _cuda(data["mask"]), _cuda(adv), bias=gp[2],
                                                   impl=cuda_impl, **gkw), data, gp)  # fmt: skip
    got = [x.cpu() for x in got]  # the oracle ran on the CPU
    naive, truth, _ = _oracle_runs(data, adv, kw)
    for name, x, xn, xt in zip(["loss", "dhidden", "dweight", "dbias"], got, naive, truth):
        assert_three_way(f"{case}: {name}", x, xn, xt, dtype)


def test_pack_bf16_kernel_is_bit_equal_to_a_cast(cuda_impl):
    """The one-launch pack of the weight sync: every value exactly `.to(torch.bfloat16)`
    (round to nearest even, inf kept, subnormals), offsets aligned, padding zero."""
    from rgpo_fast.ops import cuda_backend

    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1 + 2**-8, 1 + 3 * 2**-8,
                            3.4e38, 1e-40])  # ties to even, overflow to inf, subnormals
    ts = [torch.randn(1000, 37, generator=g), special, torch.randn(5, generator=g).half(),
          torch.randn(3, 3, generator=g).bfloat16(), torch.randn(1, generator=g)]
    ts = [_cuda(t) for t in ts]
    buf, offsets = cuda_backend.pack_params_bf16(ts)
    assert buf.device.type == DEVICE and buf.dtype == torch.bfloat16
    assert offsets == cuda_backend.pack_offsets([t.numel() for t in ts])[0]
    for t, v in zip(ts, cuda_backend.unpack_views(buf, offsets, [t.shape for t in ts])):
        assert torch.equal(v.view(torch.int16), t.to(torch.bfloat16).view(torch.int16))
    used = torch.zeros(buf.numel(), dtype=torch.bool, device=DEVICE)
    for t, off in zip(ts, offsets):
        used[off : off + t.numel()] = True
    assert not buf[~used].any()  # the alignment padding is zero
