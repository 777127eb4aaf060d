"""Thresholds of a truncated sampler (top-k, top-p), one per token, for the fused ops.

A rollout engine that samples with top_k > 0 or top_p < 1 draws from the renormalised
distribution over a set S of the largest logits, not from the full softmax; the trainer's
log-probs (and so every importance ratio) must be those of the same distribution:
    log pi_S(t) = z_t - log sum_{k in S} exp(z_k),   z = logits / T.
S is a top set of the row, so one number per row describes it: the smallest logit it keeps.
The fused kernels take that threshold and skip every logit below it in the log-sum-exp,
the entropy and the gradient (d log pi_S(t) / dz_k = 1[k = t] - pi_S(k) on S, 0 off S;
the threshold is piecewise constant in the weights and carries no gradient).

The engines' rule (vLLM and transformers agree): top-k first (keep the k largest), then
top-p on the renormalised top-k distribution: sorted by probability, a token is kept while
the mass before it is below top_p, so the most likely token always stays. Two decisions:
- The threshold is the midpoint between the last kept and the first dropped logit, not the
  last kept logit itself: the kernels recompute the logits with other tiles and summation
  orders, and a boundary logit must not change sides by a rounding.
- The target is always in S (the kernels keep it whatever its logit): a token the engine
  sampled is in its S, but transferred solutions, LUFFY's reference tokens and logits that
  moved since sampling may not be, and their log-prob must stay finite. S is then the
  sampler's set plus the target, the smallest change that keeps it finite.

- The threshold is found on the logits the kernels will compare with it: with 16-bit
  inputs the torch backend rounds the matmul output to the input dtype (as cuBLAS with a
  half output does) and the Triton kernels keep it in fp32 (`rounded_logits`). On rounded
  logits a tie at the boundary keeps every tied token; an engine keeps some of them.

Finding S needs the top of each row in order, so this pass materialises one chunk of rows'
logits at a time (torch, the torch backend's chunk), never the [tokens x vocab] logits: a
top-k of 64, then 1024 candidates finds the boundary of a peaked row (a trained LM's
nucleus is small), and only a row whose nucleus is wider is sorted whole (values and int64
indices: three times the chunk's logits, for those rows only).
"""

from __future__ import annotations

import torch

from rgpo_fast.algos.policy_loss import truncates
from rgpo_fast.ops.torch_chunked import _logits_block, auto_chunk_size

# Candidate counts tried for top-p alone: a row's nucleus is almost always far smaller than
# the vocabulary, and a top-k of a few dozen is much cheaper than sorting the row (the full
# sort is the last resort, for rows whose nucleus is wider).
TOP_P_CANDIDATES = (64, 1024)


def _boundary(vals: torch.Tensor, kept: torch.Tensor, V: int) -> torch.Tensor:
    """Midpoint between the last kept and the first dropped of the sorted `vals` (c, m),
    kept (c,) >= 1 the number kept; -inf where nothing is dropped (kept == V)."""
    last = vals.gather(1, (kept - 1)[:, None]).squeeze(1)
    nxt = vals.gather(1, kept.clamp(max=vals.shape[1] - 1)[:, None]).squeeze(1)
    return torch.where(kept < V, 0.5 * (last + nxt), torch.full_like(last, float("-inf")))


def _nucleus_count(vals: torch.Tensor, log_norm: torch.Tensor, top_p: float) -> torch.Tensor:
    """Number of the sorted `vals` (c, m) a top-p sampler keeps, given the log of the
    distribution's normaliser (c,): a token is kept while the mass ranked above it is below
    top_p, so the most likely token always is."""
    p = torch.exp(vals - log_norm[:, None])
    before = p.cumsum(-1) - p
    return (before < top_p).sum(-1).clamp(min=1)


def row_thresholds(z: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """(c, V) fp32 logits (already / T) -> (c,) fp32 thresholds (-inf: nothing dropped)."""
    c, V = z.shape
    if 0 < top_k < V:  # the k candidates and the first logit top-k drops
        vals = torch.topk(z, top_k + 1, dim=-1).values
        kept = torch.full((c,), top_k, dtype=torch.long, device=z.device)
        if top_p < 1.0:  # top-p on the renormalised top-k distribution
            kept = _nucleus_count(vals[:, :top_k], torch.logsumexp(vals[:, :top_k], -1), top_p)
        return _boundary(vals, kept, V)
    if top_p >= 1.0:
        return torch.full((c,), float("-inf"), device=z.device)
    log_norm = torch.logsumexp(z, -1)
    out = torch.empty(c, dtype=torch.float32, device=z.device)
    todo = torch.arange(c, device=z.device)
    for m in TOP_P_CANDIDATES:
        if m >= V or todo.numel() == 0:
            break
        rows = z if todo.numel() == c else z[todo]  # no copy while every row is left
        vals = torch.topk(rows, m + 1, dim=-1).values  # sorted, with one to spare
        kept = _nucleus_count(vals[:, :m], log_norm[todo], top_p)
        done = kept < m  # the boundary lies among the candidates
        out[todo[done]] = _boundary(vals[done], kept[done], V)
        todo = todo[~done]
    if todo.numel():
        vals = z[todo].sort(-1, descending=True).values
        out[todo] = _boundary(vals, _nucleus_count(vals, log_norm[todo], top_p), V)
    return out


@torch.no_grad()
def truncation_thresholds(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          temperature: float, top_p: float, top_k: int,
                          chunk_size: int | None = None,
                          rounded_logits: bool = True) -> torch.Tensor:
    """(N, H), (V, H), (V,)|None -> (N,) fp32 per-row thresholds (module docstring).
    `rounded_logits`: 16-bit logits rounded to the input dtype (the torch backend's), else
    fp32 products of the same inputs (the Triton kernels')."""
    N, V = hidden.shape[0], weight.shape[0]
    c = chunk_size or auto_chunk_size(N, V)
    out = torch.empty(N, dtype=torch.float32, device=hidden.device)
    if not rounded_logits and hidden.dtype != torch.float32:
        hidden, weight = hidden.float(), weight.float()  # bf16 x bf16 products are exact
        bias = bias.float() if bias is not None else None
    for s in range(0, N, c):
        e = min(s + c, N)
        z = _logits_block(hidden[s:e], weight, bias, temperature)
        out[s:e] = row_thresholds(z, top_p, top_k)
        del z
    return out


def sampler_thresholds(backend, hidden: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None, temperature: float, top_p: float, top_k: int,
                       chunk_size: int | None = None) -> torch.Tensor | None:
    """The `threshold` argument of `backend`'s log-prob ops: the per-row thresholds, found
    on the logits that backend compares with them, or None for an untruncated sampler."""
    if not truncates(top_p, top_k):
        return None
    return truncation_thresholds(hidden, weight, bias, temperature, top_p, top_k, chunk_size,
                                 backend.ROUNDED_LOGITS)
