"""Naive PyTorch oracle: materialises the full [tokens x vocab] logits.

This is the test oracle and nothing else: it is written as plainly as possible, directly
from docs/algorithms.md, sharing no code with the fast paths (only the aggregation rule of
`algos.aggregation`, which is tested against hand counts on its own, and the option
container `LossConfig`). Gradients come from
autograd. Default is float32 maths; `compute_dtype=torch.float64` gives the ground truth
of the three-way tolerance tests, and `upcast=False` gives "what a user would write" in the
input dtype (lm_head matmul in bf16, softmax in fp32).
"""

from __future__ import annotations

import torch

from rgpo_fast.algos.aggregation import aggregation_weights
from rgpo_fast.algos.policy_loss import LossConfig


def naive_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    compute_dtype: torch.dtype = torch.float32,
    upcast: bool = True,
) -> torch.Tensor:
    """logits = (hidden @ weight.T + bias) / temperature in `compute_dtype`, shape (..., V)."""
    if upcast:
        z = hidden.to(compute_dtype) @ weight.to(compute_dtype).T
        if bias is not None:
            z = z + bias.to(compute_dtype)
    else:
        z = hidden @ weight.T
        if bias is not None:
            z = z + bias
        z = z.to(compute_dtype)
    return z / temperature


def sampler_support(z: torch.Tensor, targets: torch.Tensor, top_p: float = 1.0,
                    top_k: int = 0) -> torch.Tensor:
    """(..., V) bool: the tokens a top-k-then-top-p sampler can draw, plus the target.

    Written from the engines' rule, token by token in rank order: rank < top_k, and the
    probability (renormalised over the top-k) of the tokens ranked above it < top_p."""
    V = z.shape[-1]
    order = z.argsort(dim=-1, descending=True, stable=True)
    ranked = z.gather(-1, order)
    rank_ok = torch.ones_like(ranked, dtype=torch.bool)
    if 0 < top_k < V:
        rank_ok[..., top_k:] = False
    probs = torch.softmax(ranked.masked_fill(~rank_ok, float("-inf")), dim=-1)
    mass_above = torch.cumsum(probs, dim=-1) - probs
    keep_ranked = rank_ok & (mass_above < top_p)
    keep = torch.zeros_like(keep_ranked).scatter(-1, order, keep_ranked)
    return keep | torch.nn.functional.one_hot(targets.long(), V).bool()


def naive_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    upcast: bool = True,
    top_p: float = 1.0,
    top_k: int = 0,
):
    """Token log-probs log softmax(z)[target] and (optionally) entropy -sum p log p; with
    top_p < 1 or top_k > 0, of the softmax over `sampler_support` only."""
    z = naive_logits(hidden, weight, bias, temperature, compute_dtype, upcast)
    if top_p < 1.0 or top_k > 0:
        with torch.no_grad():
            support = sampler_support(z, targets, top_p, top_k)
        z = z.masked_fill(~support, float("-inf"))
    logsm = torch.log_softmax(z, dim=-1)
    logp = logsm.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    if return_entropy:  # 0 log 0 = 0 on the tokens outside the support
        p = logsm.exp()
        entropy = -(p * torch.where(p > 0, logsm, torch.zeros_like(logsm))).sum(-1)
    else:
        entropy = None
    return logp, entropy


def _per_token(x: torch.Tensor | None, shape, dtype) -> torch.Tensor | None:
    if x is None:
        return None
    x = x.to(dtype)
    return x.unsqueeze(-1).expand(shape) if x.dim() == 1 else x


def naive_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    hint_mask: torch.Tensor | None = None,
    sft_mask: torch.Tensor | None = None,
    offpolicy_mask: torch.Tensor | None = None,
    rollout_logprobs: torch.Tensor | None = None,
    max_response_len: int | None = None,
    compute_dtype: torch.dtype = torch.float32,
    upcast: bool = True,
    return_entropy: bool = False,
    config: LossConfig | None = None,
    **options,
):
    """Full RGPO/PPO policy loss on (B, T, H) hidden states. Returns (loss, per-token dict).
    Loss options as in `fused_linear_policy_loss` (a `LossConfig` and/or its fields).

    Token roles: active = mask & ~hint; SFT tokens = active & sft; policy tokens =
    active & ~sft; of those, off-policy tokens use LUFFY's shaped ratio, the rest the
    clipped ratio. Loss = sum_t w_t (pg_t + beta kl_t) + sft_coef * mean over SFT tokens of
    -l_t, w_t from `loss_agg` over the policy tokens (times the TIS weight if given).
    """
    c = LossConfig.build(config, **options)
    clip_low, clip_high, clip_ratio_c, beta = c.clip_low, c.clip_high, c.clip_ratio_c, c.beta
    if beta > 0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logprobs")
    B, T = mask.shape
    dt = compute_dtype
    logp, entropy = naive_logprobs(
        hidden, weight, targets, bias, c.temperature, return_entropy or c.entropy_coef > 0,
        dt, upcast, c.top_p, c.top_k,
    )
    mask = mask.bool()
    hint = hint_mask.bool() if hint_mask is not None else torch.zeros_like(mask)
    sft = _per_token(sft_mask, (B, T), torch.bool)
    sft = sft if sft is not None else torch.zeros_like(mask)
    off = _per_token(offpolicy_mask, (B, T), torch.bool)
    off = off if off is not None else torch.zeros_like(mask)
    adv = _per_token(advantages, (B, T), dt)

    active = mask & ~hint
    sft_tok = active & sft
    policy = active & ~sft
    off_tok = policy & off
    ratio_tok = policy & ~off

    # Clipped ratio (PPO, DAPO clip-higher); rho = exp(l - stopgrad(l)) when on-policy.
    old = old_logprobs.to(dt) if old_logprobs is not None else logp.detach()
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    surr1 = -adv * ratio
    surr2 = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = torch.max(surr1, surr2)
    if clip_ratio_c is not None:
        pg = torch.where(adv < 0, torch.min(pg, -adv * clip_ratio_c), pg)
    if c.objective == "sapo":  # a sigmoid gate of the ratio instead of the clip
        tau = torch.where(adv > 0, torch.full_like(adv, c.sapo_tau_pos),
                          torch.full_like(adv, c.sapo_tau_neg))
        pg = -adv * torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    if c.objective == "cispo":  # detached clipped weight times the log-prob
        weight_is = torch.clamp(ratio, 1 - clip_low, 1 + clip_high).detach()
        pg = -adv * weight_is * logp
    elif c.objective == "gspo":  # one ratio per sequence: the geometric mean of its tokens'
        n_tok = ratio_tok.sum(-1).clamp(min=1)
        s_log = ((logp - old) * ratio_tok).sum(-1) / n_tok
        s_ratio = torch.exp(torch.clamp(s_log, -20.0, 20.0))
        a_seq = (adv * ratio_tok).sum(-1) / n_tok
        pg_seq = torch.max(-a_seq * s_ratio,
                           -a_seq * torch.clamp(s_ratio, 1 - clip_low, 1 + clip_high))
        if clip_ratio_c is not None:
            pg_seq = torch.where(a_seq < 0, torch.min(pg_seq, -a_seq * clip_ratio_c), pg_seq)
        pg = pg_seq[:, None].expand(B, T)
        ratio = s_ratio[:, None].expand(B, T)
    if c.objective != "ppo" and bool(off_tok.any()):
        raise ValueError(f"objective={c.objective!r} does not combine with offpolicy_mask")
    # LUFFY: f = pi / (pi + gamma) on the off-policy slot, no clipping.
    p = torch.exp(logp)
    pg = torch.where(off_tok, -adv * p / (p + c.luffy_gamma), pg)

    token_w = None
    masked = torch.zeros_like(policy)
    if rollout_logprobs is not None and c.rollout_correction == "token_mask":
        if old_logprobs is None:
            raise ValueError("the token mask needs old_logprobs")
        # IcePop: the token leaves the loss (and the counts) outside [low, high]
        rho_t = torch.exp(torch.clamp(old.detach() - rollout_logprobs.to(dt), -20.0, 20.0))
        inside = (rho_t >= c.token_mask_low) & (rho_t <= c.token_mask_high)
        masked = policy & ~inside
        policy = policy & inside
        ratio_tok = ratio_tok & inside
        off_tok = off_tok & inside
        token_w = torch.where(inside, rho_t, torch.zeros_like(rho_t))
    w = aggregation_weights(policy, c.loss_agg, max_response_len=max_response_len).to(dt)
    if token_w is not None:
        w = w * token_w
    if rollout_logprobs is not None and c.rollout_correction.startswith("seq"):
        if old_logprobs is None:
            raise ValueError("a sequence-level rollout correction needs old_logprobs")
        q = rollout_logprobs.to(dt)
        log_rho = ((old - q) * policy).sum(-1) / policy.sum(-1).clamp(min=1)
        rho = torch.exp(torch.clamp(log_rho, -20.0, 20.0))
        if c.rollout_correction == "seq_truncate":
            seq_w = rho.clamp(max=c.tis_cap)
        else:  # seq_mask
            seq_w = ((rho <= c.tis_cap) & (rho >= 1 / c.tis_cap)).to(dt)
        w = w * seq_w[:, None]
    w_agg = w  # the entropy bonus: aggregation and sequence weights, no token weight
    if rollout_logprobs is not None and c.rollout_correction == "token":
        tis = torch.exp(old.detach() - rollout_logprobs.to(dt)).clamp(max=c.tis_cap)
        w = torch.where(ratio_tok, w * tis, w)

    loss = (w * pg * policy).sum()
    kl = torch.zeros_like(logp)
    if beta > 0:
        d = ref_logprobs.to(dt) - logp
        if c.kl_estimator == "k1":
            kl = -d
        elif c.kl_estimator == "k2":
            kl = d**2 / 2
        else:
            kl = torch.clamp(torch.exp(d) - d - 1, -10.0, 10.0)
        loss = loss + beta * (w * kl * policy).sum()
    if c.entropy_coef > 0:  # entropy bonus, aggregated like the policy-gradient term
        loss = loss - c.entropy_coef * (w_agg * entropy * policy).sum()
    n_sft = sft_tok.sum()
    if n_sft > 0:
        loss = loss + c.sft_coef * (-(logp * sft_tok).sum() / n_sft)
    per_token = {
        "logp": logp,
        "entropy": entropy,
        "ratio": ratio,
        "pg": pg,
        "kl": kl,
        "weight": w,
        "policy": policy,
        "masked": masked,
        "sft": sft_tok,
        # SAPO's gate clips nothing
        "clip_low": (adv < 0) & (ratio < 1 - clip_low) & ratio_tok & (c.objective != "sapo"),
        "clip_high": (adv > 0) & (ratio > 1 + clip_high) & ratio_tok & (c.objective != "sapo"),
    }
    return loss, per_token
