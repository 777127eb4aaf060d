"""Loss aggregation folded into per-token weights (docs/algorithms.md, "Aggregation").

The policy loss is `sum_t w_t * L_t`; each mode only decides w_t from the mask. Folding the
normaliser into weights up front makes every token's loss independent of the others, so the
fused kernels can produce d(loss)/d(logp) in the same pass that computes logp.

Under data parallelism pass the global counts (`num_tokens`, `num_seqs`, summed over ranks,
see `global_counts`) so that every rank divides by the same normaliser.
"""

from __future__ import annotations

import torch

from rgpo_fast.algos.registry import Registry

AGGREGATIONS: Registry = Registry("loss_agg mode")


# Each rule maps (mask (B, T) fp32, tokens, seqs, max_len) to weights (B, T).
@AGGREGATIONS.register("token-mean")
def _token_mean(m, tokens, seqs, max_len):
    return m / tokens


@AGGREGATIONS.register("seq-mean-token-mean")
def _seq_mean_token_mean(m, tokens, seqs, max_len):
    seq_len = m.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
    return m / (seq_len * seqs)


@AGGREGATIONS.register("seq-mean-token-sum")
def _seq_mean_token_sum(m, tokens, seqs, max_len):
    return m / seqs


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(m, tokens, seqs, max_len):
    return m / (seqs * max_len)  # Dr. GRPO: a constant length, no per-sequence bias


AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def check_agg_mode(mode: str) -> None:
    if mode not in AGGREGATIONS:
        raise ValueError(f"loss_agg={mode!r} is unknown; valid modes: {', '.join(AGG_MODES)}")


def token_roles(
    mask: torch.Tensor,
    hint_mask: torch.Tensor | None = None,
    sft_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split response tokens (B, T) into (active, SFT, policy) bool masks, all (B, T).

    active = mask & ~hint (rationale tokens get no loss at all); SFT tokens are the active
    tokens of transferred samples (sft_mask (B,) or (B, T)); policy tokens are the rest.
    The one definition the loss and the trainer's global normalisers share.
    """
    active = mask if hint_mask is None else mask & ~hint_mask
    if sft_mask is None:
        sft = torch.zeros_like(active)
    else:
        sft = active & (sft_mask[:, None] if sft_mask.dim() == 1 else sft_mask)
    return active, sft, active & ~sft


def local_counts(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(number of masked tokens, number of sequences with at least one) as fp32 scalars."""
    m = mask.float()
    return m.sum(), (m.sum(-1) > 0).float().sum()


def global_counts(mask: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`local_counts` summed over the data-parallel group (identity when not distributed)."""
    tokens, seqs = local_counts(mask)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        both = torch.stack([tokens, seqs])
        dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
        tokens, seqs = both[0], both[1]
    return tokens, seqs


def aggregation_weights(
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    max_response_len: int | None = None,
) -> torch.Tensor:
    """Per-token weights w (B, T) float32 such that loss = sum(w * L) implements `mode`.

    mask (B, T): tokens that carry policy loss. Sequences without any such token do not
    count in B. `max_response_len` (Dr. GRPO's constant) defaults to T.
    - token-mean:              w = 1 / num_tokens
    - seq-mean-token-mean:     w = 1 / (B * len(seq))
    - seq-mean-token-sum:      w = 1 / B
    - seq-mean-token-sum-norm: w = 1 / (B * max_response_len)
    """
    check_agg_mode(mode)
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    m = mask.float()  # (B, T)
    tokens, seqs = local_counts(m)
    tokens = tokens if num_tokens is None else torch.as_tensor(num_tokens, dtype=torch.float32)
    seqs = seqs if num_seqs is None else torch.as_tensor(num_seqs, dtype=torch.float32)
    tokens, seqs = tokens.to(m.device).clamp(min=1), seqs.to(m.device).clamp(min=1)
    t_max = m.shape[-1] if max_response_len is None else max_response_len
    if t_max <= 0:
        raise ValueError(f"max_response_len must be positive, got {t_max}")
    return AGGREGATIONS.get(mode)(m, tokens, seqs, t_max)
