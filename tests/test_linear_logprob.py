"""fused_linear_logprobs on every available backend vs the naive oracle (three-way rule)."""

import pytest
import torch
from tolerance import assert_three_way
from torch.utils._python_dispatch import TorchDispatchMode

from rgpo_fast import fused_linear_logprobs
from rgpo_fast.oracle import naive_logprobs

# Ragged on purpose: neither N nor V nor H is a multiple of any block or chunk size.
N, H, V = 123, 40, 507


def _inputs(dtype, bias=True, lead=(N,)):
    h = torch.randn(*lead, H).to(dtype).requires_grad_()
    w = (0.3 * torch.randn(V, H)).to(dtype).requires_grad_()
    b = (0.5 * torch.randn(V)).to(dtype).requires_grad_() if bias else None
    t = torch.randint(0, V, lead)
    return h, w, b, t


def _grads(fn, params):
    for p in params:
        p.grad = None
    logp, ent = fn()
    # Random upstream weights so that every token's gradient matters differently.
    g1 = torch.linspace(-1, 1, logp.numel()).view_as(logp)
    out = (logp * g1).sum() + (0.5 * ent.sum() if ent is not None else 0)
    out.backward()
    return (
        logp.detach(),
        (ent.detach() if ent is not None else None),
        [p.grad.clone() if p is not None else None for p in params],
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("entropy", [False, True])
@pytest.mark.parametrize("bias, temperature, chunk", [(True, 0.7, 17), (False, 1.0, None)])
def test_matches_oracle_three_way(backend, dtype, entropy, bias, temperature, chunk):
    h, w, b, t = _inputs(dtype, bias)
    params = [h, w] + ([b] if bias else [])

    def run(kind):
        if kind == "backend":
            return fused_linear_logprobs(
                h,
                w,
                t,
                bias=b,
                temperature=temperature,
                return_entropy=entropy,
                impl=backend,
                chunk_size=chunk,
            )
        if kind == "naive":  # what a user would write in this dtype
            return naive_logprobs(h, w, t, b, temperature, entropy, torch.float32, upcast=False)
        return naive_logprobs(h, w, t, b, temperature, entropy, torch.float64)

    got, naive, truth = (_grads(lambda k=k: run(k), params) for k in ("backend", "naive", "true"))
    assert got[0].dtype == torch.float32 and got[0].shape == (N,)
    assert_three_way("logp", got[0], naive[0], truth[0], dtype)
    if entropy:
        assert_three_way("entropy", got[1], naive[1], truth[1], dtype)
    for name, g, gn, gt in zip(["dhidden", "dweight", "dbias"], got[2], naive[2], truth[2]):
        assert g.dtype == dtype
        assert_three_way(name, g, gn, gt, dtype)


def test_batched_shape_and_no_entropy(backend):
    h, w, b, t = _inputs(torch.float32, bias=False, lead=(3, 11))
    logp, ent = fused_linear_logprobs(h, w, t, impl=backend)
    assert logp.shape == (3, 11) and ent is None
    ref, _ = naive_logprobs(h, w, t)
    assert torch.allclose(logp, ref, atol=1e-5)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor produced by any aten op while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.numel())
        return out


def test_torch_path_never_holds_more_than_one_chunk_of_logits():
    h, w, b, t = _inputs(torch.float32)
    chunk = 16
    with _LargestTensor() as mode:
        logp, ent = fused_linear_logprobs(
            h, w, t, bias=b, return_entropy=True, impl="torch", chunk_size=chunk
        )
        (logp.sum() + ent.sum()).backward()
    # Largest tensor: one (chunk x V) block, or the weight gradient (V x H), never N x V.
    assert mode.largest <= max(chunk * V, V * H)
    assert mode.largest < N * V


@pytest.mark.parametrize(
    "mutate, err, match",
    [
        (lambda a: a.update(targets=a["targets"][:-1]), ValueError, "targets must have shape"),
        (lambda a: a.update(weight=a["weight"][:, :-1]), ValueError, "weight must be"),
        (lambda a: a["targets"].__setitem__(0, V), ValueError, r"targets must lie in \[0, 507\)"),
        (lambda a: a["targets"].__setitem__(0, -1), ValueError, "targets must lie"),
        (lambda a: a.update(targets=a["targets"].float()), TypeError, "targets must be an int"),
        (lambda a: a.update(weight=a["weight"].double()), TypeError, "weight dtype"),
        (lambda a: a.update(bias=torch.zeros(V + 1)), ValueError, "bias must have shape"),
        (lambda a: a.update(hidden=a["hidden"][None, None]), ValueError, "hidden must be"),
        (lambda a: a.update(temperature=0.0), ValueError, "temperature"),
        (lambda a: a.update(impl="cudnn"), ValueError, "unknown impl"),
        (lambda a: a.update(chunk_size=0), ValueError, "chunk_size"),
    ],
)
def test_bad_input_is_a_clear_error(mutate, err, match):
    h, w, b, t = _inputs(torch.float32)
    args = dict(
        hidden=h, weight=w, targets=t, bias=b, temperature=1.0, impl="torch", chunk_size=None
    )
    mutate(args)
    with pytest.raises(err, match=match):
        fused_linear_logprobs(
            args["hidden"],
            args["weight"],
            args["targets"],
            bias=args["bias"],
            temperature=args["temperature"],
            impl=args["impl"],
            chunk_size=args["chunk_size"],
        )
