"""Public functions of rgpo_fast: fused linear log-probs and the fused policy loss.

Both take hidden states and the lm_head weight and never materialise [tokens x vocab]
logits. `impl` picks the backend: "auto" (triton on CUDA, else the compiled extension,
else torch), "triton", "cuda", "cpp" or "torch" (chunked PyTorch, runs anywhere).
"""

from __future__ import annotations

import torch

from rgpo_fast.algos.aggregation import aggregation_weights, token_roles
from rgpo_fast.algos.policy_loss import (
    LossConfig,
    TokenTerms,
    check_sampler,
    metrics_from_stats,
)
from rgpo_fast.algos.sequence_loss import sequence_rollout_weights, token_mask_weights
from rgpo_fast.input_checks import (
    check_finite,
    check_linear,
    check_mask,
    check_shape,
    check_targets,
    check_tensor,
)
from rgpo_fast.ops.linear_logprob import LinearLogprobFunction, LogprobOptions
from rgpo_fast.ops.linear_policy_loss import LinearPolicyLossFunction, PolicyLossOptions


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    impl: str = "auto",
    chunk_size: int | None = None,
    top_p: float = 1.0,
    top_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax((hidden @ weight.T + bias) / temperature)[targets], without the logits.

    hidden (N, H) or (B, T, H); weight (V, H); bias (V,); targets (N,) or (B, T) integers in
    [0, V). Returns (logp, entropy) as float32 with the leading shape of hidden; entropy is
    None unless `return_entropy`. Differentiable w.r.t. hidden, weight and bias (and through
    entropy when requested). With `top_k` > 0 or `top_p` < 1 the log-probs (and entropy) are
    those of the truncated, renormalised distribution such a sampler draws from (top-k,
    then top-p, as vLLM and transformers apply them; the target always kept): see
    rgpo_fast/ops/truncation.py.
    """
    check_linear(hidden, weight, bias)
    check_tensor("targets", targets, floating=False)
    lead = tuple(hidden.shape[:-1])
    check_shape("targets", targets, lead, "the leading shape of hidden")
    check_targets(targets, weight.shape[0])
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_chunk(chunk_size)
    check_sampler(top_p, top_k)
    h = hidden.reshape(-1, hidden.shape[-1])
    opts = LogprobOptions(temperature=float(temperature), return_entropy=bool(return_entropy),
                          impl=impl, chunk_size=chunk_size, top_p=float(top_p), top_k=top_k)
    logp, ent = LinearLogprobFunction.apply(
        h, weight, bias, targets.reshape(-1).long().contiguous(), opts
    )
    return logp.view(lead), (ent.view(lead) if return_entropy else None)


def build_token_terms(
    mask: torch.Tensor,
    advantages: torch.Tensor,
    *,
    old_logprobs=None,
    ref_logprobs=None,
    hint_mask=None,
    sft_mask=None,
    offpolicy_mask=None,
    rollout_logprobs=None,
    cfg: LossConfig,
    num_global_tokens=None,
    num_global_seqs=None,
    num_global_sft_tokens=None,
    max_response_len: int | None = None,
) -> tuple[TokenTerms, torch.Tensor, torch.Tensor]:
    """Validated (B, T) inputs -> flat TokenTerms over active tokens, the active mask, and
    the number of policy tokens the token mask of the rollout correction dropped (0-dim).

    Active = mask & ~hint. Of those, SFT tokens (transferred samples) get the NLL term with
    weight sft_coef / #SFT tokens; the rest are policy tokens weighted by `loss_agg`. With
    rollout_correction="token_mask", policy tokens whose ratio to the rollout leaves the band
    are not active (see `token_mask_weights` in algos/sequence_loss.py).
    """
    B, T = mask.shape
    bt = [(B, T)]
    hint = check_mask("hint_mask", hint_mask, bt) if hint_mask is not None else None
    sft = check_mask("sft_mask", sft_mask, [(B,), (B, T)]) if sft_mask is not None else None
    off = None
    if offpolicy_mask is not None:
        off = check_mask("offpolicy_mask", offpolicy_mask, [(B,), (B, T)])
    check_tensor("advantages", advantages, floating=True)
    if tuple(advantages.shape) not in ((B,), (B, T)):
        raise ValueError(
            f"advantages must have shape ({B},) or ({B}, {T}), got {tuple(advantages.shape)}"
        )
    check_finite("advantages", advantages)
    if cfg.beta > 0 and ref_logprobs is None:
        raise ValueError(f"beta={cfg.beta} > 0 needs ref_logprobs (the reference policy's "
                         "log-probs of the targets); pass them, or set beta=0")
    per_tok = {
        "old_logprobs": old_logprobs,
        "ref_logprobs": ref_logprobs,
        "rollout_logprobs": rollout_logprobs,
    }
    for name, x in per_tok.items():
        if x is not None:
            check_tensor(name, x, floating=True)
            check_shape(name, x, (B, T), "the shape of mask")
            check_finite(name, x, where=mask)

    def tok(x):  # (B,) or (B, T) -> (B, T)
        return x[:, None].expand(B, T) if x.dim() == 1 else x

    active, sft_tok, policy = token_roles(mask, hint, sft)
    n_masked = mask.new_zeros((), dtype=torch.float32)
    token_w = None
    if rollout_logprobs is not None and cfg.rollout_correction == "token_mask":
        if old_logprobs is None:
            raise ValueError("rollout_correction='token_mask' needs old_logprobs (the "
                             "trainer's log-probs the ratio to the rollout is taken of)")
        keep, token_w = token_mask_weights(policy, old_logprobs.float(),
                                           rollout_logprobs.float(), cfg)
        n_masked = (policy & ~keep).sum().float()
        active = active & (keep | ~policy)  # masked tokens leave the op entirely
        policy = keep
        rollout_logprobs = None  # the weight is folded in below, no truncated IS on top
    pg_w = aggregation_weights(
        policy,
        cfg.loss_agg,
        num_tokens=num_global_tokens,
        num_seqs=num_global_seqs,
        max_response_len=max_response_len,
    )
    if rollout_logprobs is not None and cfg.rollout_correction != "token":
        # Sequence-level correction: one detached weight per sequence, folded into the
        # aggregation weights here, so every backend's kernels apply it unchanged.
        if old_logprobs is None:
            raise ValueError(f"rollout_correction={cfg.rollout_correction!r} needs "
                             "old_logprobs (the trainer's log-probs the ratio is taken to)")
        seq_w = sequence_rollout_weights(policy, old_logprobs.float(), rollout_logprobs.float(),
                                         cfg)
        pg_w = pg_w * seq_w[:, None]
        rollout_logprobs = None  # no token-level weight on top
    if token_w is not None:
        pg_w = pg_w * token_w
    n_sft = sft_tok.sum().float() if num_global_sft_tokens is None else num_global_sft_tokens
    n_sft = torch.as_tensor(n_sft, dtype=torch.float32, device=mask.device).clamp(min=1)
    sft_w = sft_tok.float() * (cfg.sft_coef / n_sft)

    sel = active.reshape(-1)

    def flat(x, dtype=torch.float32):
        return None if x is None else tok(x).reshape(-1)[sel].to(dtype).contiguous()

    terms = TokenTerms(
        advantages=flat(advantages),
        pg_weight=flat(pg_w),
        sft_weight=flat(sft_w),
        policy=flat(policy, torch.bool),
        offpolicy=flat(off, torch.bool),
        old_logprobs=flat(old_logprobs),
        ref_logprobs=flat(ref_logprobs),
        rollout_logprobs=flat(rollout_logprobs),
        seq_index=flat(torch.arange(B, device=mask.device), torch.long),
    )
    return terms, active, n_masked


def fused_linear_policy_loss(
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
    num_global_tokens: float | torch.Tensor | None = None,
    num_global_seqs: float | torch.Tensor | None = None,
    num_global_sft_tokens: float | torch.Tensor | None = None,
    return_entropy: bool = False,
    impl: str = "auto",
    chunk_size: int | None = None,
    config: LossConfig | None = None,
    **options,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped / hint-masked RGPO policy loss straight from hidden states (docs/algorithms.md).

    hidden (B, T, H), weight (V, H), targets (B, T), mask (B, T) response tokens,
    advantages (B,) or (B, T); old/ref/rollout log-probs (B, T); hint_mask (B, T) tokens
    copied from a rationale (no gradient at all); sft_mask (B,) or (B, T) transferred samples
    trained with sft_coef * NLL; offpolicy_mask (B,) or (B, T) LUFFY slots (shaped ratio).
    Only active tokens (mask & ~hint) are computed; targets elsewhere may be anything
    (e.g. -100 padding). Returns the scalar loss and a dict of 0-dim metric tensors.
    Under data parallelism pass the all-reduced counts as num_global_*.

    Loss options are the fields of `LossConfig` (`LossConfig.names()`: clip_low, clip_high,
    clip_ratio_c, beta, kl_estimator, sft_coef, loss_agg, temperature, luffy_gamma, tis_cap,
    entropy_coef, objective, sapo_tau_pos, sapo_tau_neg, rollout_correction, token_mask_low,
    token_mask_high, top_p, top_k): pass a `config`, keywords, or both (keywords replace
    the config's fields). `tokens/masked` counts the policy tokens the token mask dropped.
    """
    cfg = LossConfig.build(config, **options)
    check_linear(hidden, weight, bias)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, H) for the policy loss, got {tuple(hidden.shape)}")
    B, T, H = hidden.shape
    check_tensor("targets", targets, floating=False)
    check_shape("targets", targets, (B, T), "the leading shape of hidden")
    mask = check_mask("mask", mask, [(B, T)])
    _check_chunk(chunk_size)
    terms, active, n_masked = build_token_terms(
        mask,
        advantages,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs,
        hint_mask=hint_mask,
        sft_mask=sft_mask,
        offpolicy_mask=offpolicy_mask,
        rollout_logprobs=rollout_logprobs,
        cfg=cfg,
        num_global_tokens=num_global_tokens,
        num_global_seqs=num_global_seqs,
        num_global_sft_tokens=num_global_sft_tokens,
        max_response_len=max_response_len,
    )
    check_targets(targets, weight.shape[0], where=active)
    sel = active.reshape(-1)
    h_all = hidden.reshape(B * T, H)
    if bool(sel.all()):
        h, t = h_all, targets.reshape(-1)
    else:
        idx = sel.nonzero().squeeze(1)
        h, t = h_all.index_select(0, idx), targets.reshape(-1).index_select(0, idx)
    opts = PolicyLossOptions(loss=cfg, impl=impl, chunk_size=chunk_size,
                             with_entropy=bool(return_entropy))
    loss, stats = LinearPolicyLossFunction.apply(
        h, weight, bias, t.long().contiguous(), terms, opts
    )
    metrics = metrics_from_stats(stats, bool(return_entropy))
    metrics["tokens/masked"] = n_masked
    return loss, metrics
