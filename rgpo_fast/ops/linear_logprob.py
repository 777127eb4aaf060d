"""autograd.Function for fused linear log-probs (and entropy); maths lives in the backends."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rgpo_fast.algos.policy_loss import truncates
from rgpo_fast.ops.backends import resolve_backend
from rgpo_fast.ops.truncation import sampler_thresholds


@dataclass(frozen=True)
class LogprobOptions:
    temperature: float = 1.0
    return_entropy: bool = False
    impl: str = "auto"
    chunk_size: int | None = None
    top_p: float = 1.0  # a truncated sampler's top-p / top-k (ops/truncation.py)
    top_k: int = 0

    @property
    def truncated(self) -> bool:
        return truncates(self.top_p, self.top_k)


class LinearLogprobFunction(torch.autograd.Function):
    """(N, H), (V, H), (V,)|None, (N,) -> logp (N,) fp32, entropy (N,) fp32 (empty if off).

    Saves hidden, weight, bias, targets and two fp32 numbers per token (log-sum-exp and
    entropy; three with a truncated sampler's threshold); the backward recomputes logits
    chunk by chunk.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, opts: LogprobOptions):
        backend = resolve_backend(opts.impl, hidden.device, opts.truncated)
        thr = sampler_thresholds(backend, hidden, weight, bias, opts.temperature, opts.top_p,
                                 opts.top_k, opts.chunk_size)
        logp, lse, ent = backend.logprob_forward(
            hidden, weight, bias, targets, opts.temperature, opts.return_entropy, opts.chunk_size,
            threshold=thr,
        )
        ctx.backend, ctx.opts = backend, opts
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent, thr)
        if ent is None:
            ent = logp.new_empty(0)
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, bias, targets, lse, ent, thr = ctx.saved_tensors
        opts = ctx.opts
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        if not any(needs):
            return None, None, None, None, None
        g_logp = g_logp.float() if g_logp is not None else torch.zeros_like(lse)
        if not opts.return_entropy or g_ent is None:
            g_ent = None
        else:
            g_ent = g_ent.float()
        dh, dw, db = ctx.backend.logprob_backward(
            hidden,
            weight,
            bias,
            targets,
            lse,
            ent,
            opts.temperature,
            g_logp.contiguous(),
            g_ent.contiguous() if g_ent is not None else None,
            needs,
            opts.chunk_size,
            threshold=thr,
        )
        return dh, dw, db, None, None
