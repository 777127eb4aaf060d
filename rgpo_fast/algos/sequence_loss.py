"""Sequence-level pieces of the policy loss (docs/algorithms.md): GSPO's sequence ratio and
the rollout corrections folded into the aggregation (the sequence-level ones, and the token
mask, which changes which tokens count). Unlike algos/policy_loss.py, a token's term here
depends on the other tokens of its sequence (through a mean of log-ratios), so GSPO runs in
the composed path of the fused op (ops/linear_policy_loss.py), still without logits.

Sequences are identified by `seq_index`, the row of each flattened token; the mean of a
sequence is over its policy tokens.
"""

from __future__ import annotations

import torch

from rgpo_fast.algos.policy_loss import (
    LOG_RATIO_CLAMP,
    OBJECTIVES,
    POLICY_TERMS,
    LossConfig,
    TokenTerms,
)


def segment_sum(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """(N,) values summed per segment `index` (N,) in [0, n) -> (n,)."""
    return values.new_zeros(n).index_add_(0, index, values)


@OBJECTIVES.register("gspo")
def gspo_objective(logp: torch.Tensor, terms: TokenTerms, w: torch.Tensor, cfg: LossConfig):
    """GSPO: s_i = exp(mean over sequence i's policy tokens of (l_t - old_t)), the PPO clip
    (and dual clip) applied to s_i with the sequence's advantage, and the loss weighted by
    W_i = sum of its tokens' weights `w` (so `seq-mean-token-mean` gives GSPO's 1 / B).

    Returns the per-token (loss, dloss/dl) -- every policy token of sequence i carries
    w_t * pg_i, and dL/dl_t = W_i * dpg_i/d(log s_i) / n_i -- plus the per-token ratio s_i
    and the clip masks of its sequence, like the token terms.
    """
    if terms.seq_index is None:
        raise ValueError("objective='gspo' needs the tokens' sequence index (TokenTerms.seq_index)")
    idx, pol = terms.seq_index, terms.policy
    n = int(idx.max()) + 1 if idx.numel() else 0
    pf = pol.to(logp.dtype)
    old = terms.old_logprobs if terms.old_logprobs is not None else logp
    count = segment_sum(pf, idx, n).clamp(min=1.0)
    mean_log_ratio = segment_sum((logp - old) * pf, idx, n) / count  # log s_i
    adv = segment_sum(terms.advantages.to(logp.dtype) * pf, idx, n) / count
    W = segment_sum(w.to(logp.dtype), idx, n)  # w is 0 off policy tokens
    # The clipped term of a "token" whose log-ratio is log s_i: pg_i and dpg_i/d(log s_i).
    pg, g, ratio, c_low, c_high, dual = POLICY_TERMS.get("ppo")(
        mean_log_ratio, torch.zeros_like(mean_log_ratio), adv, cfg)
    loss_t = w * pg[idx]
    grad_t = torch.where(pol, (W * g / count)[idx], torch.zeros_like(logp))
    return loss_t, grad_t, ratio[idx], c_low[idx], c_high[idx], dual[idx]


def sequence_rollout_weights(mask: torch.Tensor, old: torch.Tensor, rollout: torch.Tensor,
                             cfg: LossConfig) -> torch.Tensor:
    """Per-sequence rollout-correction weights (B,) from (B, T) policy-token mask and the
    trainer's old / the engine's log-probs: the geometric mean of the sequence's ratios
    rho_i = exp(mean_t (o_t - q_t)), truncated at tis_cap ("seq_truncate") or a 0/1 mask
    that drops the sequence when rho_i is outside [1 / tis_cap, tis_cap] ("seq_mask")."""
    m = mask.to(old.dtype)
    log_rho = ((old - rollout) * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    rho = torch.exp(log_rho.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    if cfg.rollout_correction == "seq_truncate":
        return rho.clamp(max=cfg.tis_cap)
    if cfg.rollout_correction == "seq_mask":
        return ((rho <= cfg.tis_cap) & (rho >= 1.0 / cfg.tis_cap)).to(old.dtype)
    raise ValueError(f"not a sequence-level correction: {cfg.rollout_correction!r}")


def token_mask_weights(mask: torch.Tensor, old: torch.Tensor, rollout: torch.Tensor,
                       cfg: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The token mask of the rollout correction ("token_mask", IcePop): with the per-token
    ratio rho_t = exp(o_t - q_t) of the trainer's old and the engine's log-probs, a token
    of `mask` (B, T) is kept when token_mask_low <= rho_t <= token_mask_high and weighted
    by rho_t (importance sampling inside the band), and masked otherwise: it leaves the
    loss and the token counts of the aggregation. Returns (keep (B, T) bool, weight (B, T)
    with rho_t on kept tokens, 0 elsewhere)."""
    rho = torch.exp((old - rollout).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    keep = mask & (rho >= cfg.token_mask_low) & (rho <= cfg.token_mask_high)
    return keep, torch.where(keep, rho, torch.zeros_like(rho))
