"""Triton kernel: the per-token clipped / hint-masked policy loss, its gradient and metrics.

One elementwise pass over the active tokens computes exactly
`rgpo_fast.algos.policy_loss.token_loss_and_grad` (docs/algorithms.md):

    rho   = exp(clamp(l - o, -20, 20))                (rho = 1, drho/dl = 1 without o)
    pg    = max(-A rho, -A clip(rho, 1 - eps_lo, 1 + eps_hi));  dual clip: A < 0 and rho > c
            -> pg = -A c;  LUFFY tokens: pg = -A f, f = p / (p + gamma), p = e^l
    w     = pg_weight * min(exp(min(o - q, 20)), C) on ratio tokens with rollout log-probs q
    loss  = w pg + w beta kl(l, ref) - sft_weight l
    dL/dl = w dpg/dl + w beta dkl/dl - sft_weight

Hint-masked tokens never reach the kernel (the caller keeps only active tokens); padding
and hint masking therefore cost nothing here. Each program writes its partial sums of the
loss and of the STAT_NAMES statistics to one row of a (num_programs, 1 + NUM_STATS) buffer
that the launcher sums on the host side in a fixed order: deterministic, unlike atomics, and
the buffer is tiny (N / BLOCK rows).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rgpo_fast.algos.policy_loss import K3_CLAMP as _K3_CLAMP
from rgpo_fast.algos.policy_loss import LOG_RATIO_CLAMP as _LOG_RATIO_CLAMP
from rgpo_fast.algos.policy_loss import LossConfig, TokenTerms

# Column order of the statistics (must equal rgpo_fast.algos.policy_loss.STAT_NAMES).
KERNEL_STAT_NAMES = (
    "pg_loss", "kl_loss", "sft_loss", "n_policy", "n_clip_low", "n_clip_high",
    "n_dual_clip", "ratio_sum", "kl_sum", "n_sft", "entropy_sum", "n_active",
)  # fmt: skip
# The clamps of algos/policy_loss.py, as constexpr globals: a jitted kernel may read a
# module global only when it is a tl.constexpr (the interpreter accepts a plain float, the
# GPU compiler raises NameError; kernels/compile_check.py is what catches that on a CPU).
LOG_RATIO_CLAMP = tl.constexpr(_LOG_RATIO_CLAMP)
K3_CLAMP = tl.constexpr(_K3_CLAMP)


@triton.jit
def _policy_loss_kernel(
    logp_ptr,  # (N,) fp32 token log-probs under the current policy
    adv_ptr,  # (N,) fp32 advantages
    pg_weight_ptr,  # (N,) fp32 aggregation weight of policy tokens (0 elsewhere)
    sft_weight_ptr,  # (N,) fp32 sft_coef / #SFT tokens on SFT tokens (0 elsewhere)
    policy_ptr,  # (N,) uint8 1 on policy-gradient tokens
    off_ptr,  # (N,) uint8 1 on LUFFY off-policy tokens (HAS_OFFPOLICY)
    old_ptr,  # (N,) fp32 old log-probs (HAS_OLD)
    ref_ptr,  # (N,) fp32 reference log-probs (KL_KIND != 0)
    rollout_ptr,  # (N,) fp32 rollout-engine log-probs for TIS (HAS_ROLLOUT)
    ent_ptr,  # (N,) fp32 token entropies (HAS_ENTROPY)
    grad_ptr,  # (N,) fp32 out: d(loss)/d(logp)
    part_ptr,  # (num_programs, 1 + NUM_STATS) fp32 out: [loss, stats...] partial sums
    N, stride_part_p,
    clip_low, clip_high, clip_c, beta, gamma, tis_cap,
    HAS_OLD: tl.constexpr, HAS_OFFPOLICY: tl.constexpr,
    HAS_ROLLOUT: tl.constexpr, HAS_ENTROPY: tl.constexpr, DUAL_CLIP: tl.constexpr,
    KL_KIND: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Per-token loss and dL/dl of the module docstring; KL_KIND is algos.policy_loss.KL_CODES:
    0 = no KL term (beta = 0 or no reference), 1/2/3 = k1 (l - ref), k2 ((ref - l)^2 / 2),
    k3 (e^d - d - 1, d = ref - l, clamped to [-10, 10], zero gradient outside)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    logp = tl.load(logp_ptr + offs, mask=mask, other=0.0)
    adv = tl.load(adv_ptr + offs, mask=mask, other=0.0)
    policy = tl.load(policy_ptr + offs, mask=mask, other=0) != 0
    zero = tl.zeros((BLOCK,), dtype=tl.float32)

    # Clipped ratio (PPO with clip-higher).
    if HAS_OLD:
        old = tl.load(old_ptr + offs, mask=mask, other=0.0)
        raw = logp - old
        log_ratio = tl.minimum(tl.maximum(raw, -LOG_RATIO_CLAMP), LOG_RATIO_CLAMP)
        outside = tl.abs(raw) >= LOG_RATIO_CLAMP  # the clamp kills the gradient there
    else:
        old = logp  # rho = exp(l - stopgrad(l)) = 1, drho/dl = 1
        log_ratio = zero
        outside = offs < 0  # all False
    ratio = tl.exp(log_ratio)
    lo = 1.0 - clip_low
    hi = 1.0 + clip_high
    clipped = tl.minimum(tl.maximum(ratio, lo), hi)
    pg = tl.maximum(-adv * ratio, -adv * clipped)
    c_low = (adv < 0) & (ratio < lo)
    c_high = (adv > 0) & (ratio > hi)
    grad = tl.where(c_low | c_high | outside, zero, -adv * ratio)
    dual = zero != zero
    if DUAL_CLIP:
        dual = (adv < 0) & (ratio > clip_c)
        pg = tl.where(dual, -adv * clip_c, pg)
        grad = tl.where(dual, zero, grad)

    # LUFFY shaped ratio on off-policy tokens: f = p / (p + gamma), no clipping.
    if HAS_OFFPOLICY:
        off_tok = policy & (tl.load(off_ptr + offs, mask=mask, other=0) != 0)
        p = tl.exp(logp)
        denom = p + gamma
        f = p / denom
        pg = tl.where(off_tok, -adv * f, pg)
        grad = tl.where(off_tok, -adv * p * gamma / (denom * denom), grad)
        ratio = tl.where(off_tok, f, ratio)
        ratio_tok = policy & (off_tok == 0)
    else:
        ratio_tok = policy

    # Aggregation weight, times the truncated importance weight on ratio tokens.
    w = tl.load(pg_weight_ptr + offs, mask=mask, other=0.0)
    if HAS_ROLLOUT:
        q = tl.load(rollout_ptr + offs, mask=mask, other=0.0)
        tis = tl.exp(tl.minimum(old - q, LOG_RATIO_CLAMP))
        w = w * tl.where(ratio_tok, tl.minimum(tis, tis_cap), 1.0)
    w = tl.where(policy, w, zero)
    loss_pg = w * pg
    grad_t = w * grad

    kl = zero
    loss_kl = zero
    if KL_KIND != 0:
        ref = tl.load(ref_ptr + offs, mask=mask, other=0.0)
        d = ref - logp
        if KL_KIND == 1:
            kl = logp - ref
            dkl = zero + 1.0
        elif KL_KIND == 2:
            kl = 0.5 * d * d
            dkl = -d
        else:
            e = tl.exp(d)
            k3 = e - d - 1.0
            inside = (k3 >= -K3_CLAMP) & (k3 <= K3_CLAMP)
            kl = tl.minimum(tl.maximum(k3, -K3_CLAMP), K3_CLAMP)
            dkl = tl.where(inside, 1.0 - e, zero)
        kl = tl.where(policy, kl, zero)
        loss_kl = w * beta * kl
        grad_t = grad_t + w * beta * dkl

    sft = tl.load(sft_weight_ptr + offs, mask=mask, other=0.0)
    loss_sft = -sft * logp
    grad_t = grad_t - sft
    tl.store(grad_ptr + offs, grad_t, mask=mask)

    sft_tok = sft > 0
    pf = tl.where(policy, 1.0, zero)
    active = policy | sft_tok
    row = part_ptr + pid * stride_part_p
    tl.store(row + 0, tl.sum(loss_pg + loss_kl + loss_sft, axis=0))
    tl.store(row + 1, tl.sum(loss_pg, axis=0))
    tl.store(row + 2, tl.sum(loss_kl, axis=0))
    tl.store(row + 3, tl.sum(loss_sft, axis=0))
    tl.store(row + 4, tl.sum(pf, axis=0))
    tl.store(row + 5, tl.sum(tl.where(c_low & ratio_tok, 1.0, zero), axis=0))
    tl.store(row + 6, tl.sum(tl.where(c_high & ratio_tok, 1.0, zero), axis=0))
    tl.store(row + 7, tl.sum(tl.where(dual & ratio_tok, 1.0, zero), axis=0))
    tl.store(row + 8, tl.sum(ratio * pf, axis=0))
    tl.store(row + 9, tl.sum(kl * pf, axis=0))
    tl.store(row + 10, tl.sum(tl.where(sft_tok, 1.0, zero), axis=0))
    if HAS_ENTROPY:
        ent = tl.load(ent_ptr + offs, mask=mask, other=0.0)
        tl.store(row + 11, tl.sum(tl.where(active, ent, zero), axis=0))
    else:
        tl.store(row + 11, tl.sum(zero, axis=0))
    tl.store(row + 12, tl.sum(tl.where(active, 1.0, zero), axis=0))


def _f32(name: str, t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    if t is None:
        return None
    assert t.shape == (n,), f"{name} must be ({n},), got {tuple(t.shape)}"
    assert t.dtype == torch.float32 and t.is_contiguous(), f"{name}: contiguous fp32"
    return t


def _u8(name: str, t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    if t is None:
        return None
    assert t.shape == (n,) and t.dtype == torch.bool, f"{name} must be a ({n},) bool tensor"
    return t.contiguous().view(torch.uint8)  # same bytes, a type Triton loads everywhere


def policy_loss_forward_backward(
    logp: torch.Tensor,
    terms: TokenTerms,
    cfg: LossConfig,
    entropy: torch.Tensor | None = None,
    *,
    block: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) log-probs, the per-token terms and the loss options -> loss () fp32,
    stats (NUM_STATS,) fp32, dloss/dlogp (N,) fp32."""
    n = logp.shape[0]
    _f32("logp", logp, n)
    for name in ("advantages", "pg_weight", "sft_weight", "old_logprobs", "ref_logprobs",
                 "rollout_logprobs"):  # fmt: skip
        _f32(name, getattr(terms, name), n)
    _f32("entropy", entropy, n)
    pol = _u8("policy", terms.policy, n)
    off = _u8("offpolicy", terms.offpolicy, n)
    kl_code = cfg.kl_code if terms.ref_logprobs is not None else 0
    grad = torch.empty_like(logp)
    programs = max(1, triton.cdiv(n, block))
    part = torch.zeros((programs, 1 + len(KERNEL_STAT_NAMES)), dtype=torch.float32,
                       device=logp.device)  # fmt: skip
    if n > 0:
        # Unused inputs (flag off) are never read; logp stands in for them. Written
        # pointers (grad, part) are always tensors of their own.
        def given(t):
            return t if t is not None else logp

        _policy_loss_kernel[(programs,)](
            logp, terms.advantages, terms.pg_weight, terms.sft_weight, pol,
            off if off is not None else pol,
            given(terms.old_logprobs), given(terms.ref_logprobs),
            given(terms.rollout_logprobs), given(entropy),
            grad, part, n, part.stride(0),
            float(cfg.clip_low), float(cfg.clip_high),
            float(cfg.clip_ratio_c) if cfg.clip_ratio_c is not None else 0.0,
            float(cfg.beta), float(cfg.luffy_gamma), float(cfg.tis_cap),
            HAS_OLD=terms.old_logprobs is not None,
            HAS_OFFPOLICY=off is not None, HAS_ROLLOUT=terms.rollout_logprobs is not None,
            HAS_ENTROPY=entropy is not None, DUAL_CLIP=cfg.clip_ratio_c is not None,
            KL_KIND=kl_code, BLOCK=block,
        )  # fmt: skip
    sums = part.sum(0)  # fixed-order reduction of the per-program partials
    return sums[0], sums[1:], grad
