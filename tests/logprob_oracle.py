"""Inputs and oracle gradients of the log-prob kernels, shared by the Triton tests
(tests/test_triton_kernels.py, tests/test_triton_launch.py)."""

import torch

from rgpo_fast.oracle import naive_logprobs

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def logprob_inputs(N, H, V, dtype, bias=True, scale=0.3, seed=0):
    """hidden (N, H), weight (V, H) scaled by `scale`, bias (V,) or None, targets (N,)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).to(dtype)
    w = (scale * torch.randn(V, H, generator=g)).to(dtype)
    b = (0.5 * torch.randn(V, generator=g)).to(dtype) if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    return h.to(DEV), w.to(DEV), (b.to(DEV) if bias else None), t.to(DEV)


def oracle_grads(h, w, b, t, temperature, g_logp, g_ent, compute_dtype, upcast, top_p=1.0,
                 top_k=0):
    """[logp, entropy, dh, dw, db] from the naive oracle and autograd (db None without a
    bias), for upstream gradients g_logp and g_ent; top_p / top_k: a truncated sampler's."""
    params = [x.detach().clone().requires_grad_() for x in (h, w, b) if x is not None]
    bb = params[2] if b is not None else None
    logp, ent = naive_logprobs(params[0], params[1], t, bb, temperature, True, compute_dtype,
                               upcast, top_p, top_k)  # fmt: skip
    (logp * g_logp.to(logp.dtype)).sum().add((ent * g_ent.to(ent.dtype)).sum()).backward()
    return [logp.detach(), ent.detach()] + [p.grad for p in params] + ([None] if bb is None
                                                                        else [])  # fmt: skip
