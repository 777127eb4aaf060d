"""autograd.Function for the fused linear policy loss (logits never materialised).

Forward computes the scalar loss AND its gradients w.r.t. hidden, weight and bias in one
sweep (each token's loss depends on its own log-prob only, see algos/policy_loss.py);
backward only scales them by the incoming scalar gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rgpo_fast.algos.policy_loss import (
    LossConfig,
    TokenTerms,
    entropy_bonus,
    token_loss_and_grad,
)
from rgpo_fast.ops.backends import resolve_backend
from rgpo_fast.ops.truncation import sampler_thresholds


@dataclass(frozen=True)
class PolicyLossOptions:
    loss: LossConfig
    impl: str = "auto"
    chunk_size: int | None = None
    with_entropy: bool = False


class LinearPolicyLossFunction(torch.autograd.Function):
    """(N, H), (V, H), (V,)|None, (N,), TokenTerms -> loss () fp32, stats (NUM_STATS,) fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, terms: TokenTerms, opts: PolicyLossOptions):
        cfg = opts.loss
        backend = resolve_backend(opts.impl, hidden.device, cfg.truncated)
        needs = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        if cfg.entropy_coef > 0.0 or cfg.objective != "ppo" or cfg.truncated:
            loss, stats, dh, dw, db = _composed(
                backend, hidden, weight, bias, targets, terms, opts, needs)
        else:
            loss, stats, dh, dw, db = backend.policy_loss_forward_backward(
                hidden, weight, bias, targets, terms, opts.loss, needs, opts.with_entropy,
                opts.chunk_size)
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


def _composed(backend, hidden, weight, bias, targets, terms: TokenTerms,
              opts: PolicyLossOptions, needs):
    """The policy loss composed from the backend's fused log-prob kernels, for what the
    one-sweep path does not cover: the entropy bonus (entropy_coef > 0), the objectives
    other than "ppo" (GSPO's ratio is a mean over the sequence, so a token's gradient is
    known only once all its sequence's log-probs are) and a truncated sampler's log-probs
    (top_k / top_p: per-row thresholds from ops/truncation.py, one more pass over the
    logits). Forward sweep (logp, lse, and H when needed) -> per-token loss and d/dlogp
    over all N tokens (algos/policy_loss.py), the bonus and d/dH -> one backward sweep.
    Logits are still never stored; the price against the one-sweep path is the logits'
    recompute in the backward. Keeping these options out of the one-sweep kernels keeps
    the default objective's kernels as they are."""
    cfg = opts.loss
    with_ent = opts.with_entropy or cfg.entropy_coef > 0.0
    thr = sampler_thresholds(backend, hidden, weight, bias, cfg.temperature, cfg.top_p,
                             cfg.top_k, opts.chunk_size)
    logp, lse, ent = backend.logprob_forward(hidden, weight, bias, targets, cfg.temperature,
                                             with_ent, opts.chunk_size, threshold=thr)
    loss_t, g_logp, stats = token_loss_and_grad(logp, terms, cfg, ent)
    bonus, g_ent = entropy_bonus(ent, terms, cfg) if cfg.entropy_coef > 0.0 else (0.0, None)
    dh = dw = db = None
    if any(needs):
        dh, dw, db = backend.logprob_backward(hidden, weight, bias, targets, lse,
                                              ent if g_ent is not None else None,
                                              cfg.temperature, g_logp.float(), g_ent, needs,
                                              opts.chunk_size, threshold=thr)
    return loss_t.sum() + bonus, stats, dh, dw, db
