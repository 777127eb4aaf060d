"""autograd.Function for the fused linear policy loss (logits never materialised).

Forward computes the scalar loss AND its gradients w.r.t. hidden, weight and bias in one
sweep (each token's loss depends on its own log-prob only, see algos/policy_loss.py);
backward only scales them by the incoming scalar gradient. Backends without a fused
implementation are composed: log-prob forward -> per-token loss/grad -> log-prob backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rgpo_fast.algos.policy_loss import LossConfig, TokenTerms, token_loss_and_grad
from rgpo_fast.ops.backends import resolve_backend


@dataclass(frozen=True)
class PolicyLossOptions:
    loss: LossConfig
    impl: str = "auto"
    chunk_size: int | None = None
    with_entropy: bool = False


def _compose(backend, hidden, weight, bias, targets, terms, cfg, needs, with_entropy, chunk):
    """Generic path for backends that only provide the log-prob forward/backward."""
    logp, lse, ent = backend.logprob_forward(
        hidden, weight, bias, targets, cfg.temperature, with_entropy, chunk
    )
    loss_t, g, stats = token_loss_and_grad(logp, terms, cfg, ent)
    dh = dw = db = None
    if any(needs):
        dh, dw, db = backend.logprob_backward(
            hidden,
            weight,
            bias,
            targets,
            lse,
            None,
            cfg.temperature,
            g.contiguous(),
            None,
            needs,
            chunk,
        )
    return loss_t.sum(), stats, dh, dw, db


class LinearPolicyLossFunction(torch.autograd.Function):
    """(N, H), (V, H), (V,)|None, (N,), TokenTerms -> loss () fp32, stats (NUM_STATS,) fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, terms: TokenTerms, opts: PolicyLossOptions):
        backend = resolve_backend(opts.impl, hidden.device)
        needs = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        fused = getattr(backend, "policy_loss_forward_backward", None)
        args = (hidden, weight, bias, targets, terms, opts.loss, needs)
        if fused is not None:
            loss, stats, dh, dw, db = fused(*args, opts.with_entropy, opts.chunk_size)
        else:
            loss, stats, dh, dw, db = _compose(backend, *args, opts.with_entropy, opts.chunk_size)
        ctx.save_for_backward(dh, dw, db)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, g_loss, g_stats):
        dh, dw, db = ctx.saved_tensors
        # The loss is linear in what flows back: scale the precomputed gradients.
        scale = g_loss.float()

        def scaled(t):
            if t is None:
                return None
            return t if bool(scale == 1.0) else (t.float() * scale).to(t.dtype)

        return scaled(dh), scaled(dw), scaled(db), None, None, None
