"""Group-relative advantage estimators (docs/algorithms.md, "Advantages").

Every estimator maps sequence rewards (B,) and integer group ids (B,) to sequence
advantages (B,). Samples of one prompt share a group id; groups need not be contiguous
or of equal size. All maths in float32 (float64 in, float64 out).
"""

from __future__ import annotations

import torch

from rgpo_fast.algos.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor):
    """Per-sample group size, group sum and group sum of squares, each (B,)."""
    uniq, inverse = torch.unique(group_ids, return_inverse=True)  # inverse: (B,) dense ids
    zeros = torch.zeros(uniq.numel(), dtype=rewards.dtype, device=rewards.device)
    count = zeros.index_add(0, inverse, torch.ones_like(rewards))
    total = zeros.index_add(0, inverse, rewards)
    return count[inverse], total[inverse], inverse


def _check(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(group_ids.shape)}"
        )
    if group_ids.dtype.is_floating_point:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or Inf")
    return rewards if rewards.dtype == torch.float64 else rewards.float()


@ADVANTAGES.register("grpo")
def grpo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """A_j = (r_j - mean(r)) / (std(r) + eps), std with Bessel's correction (as TRL, verl).

    A group of one sample has no spread: its advantage is 0.
    """
    r = _check(rewards, group_ids)
    count, total, inverse = _group_stats(r, group_ids)
    mean = total / count  # (B,)
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    sq = torch.zeros(n_groups, dtype=r.dtype, device=r.device)
    sq = sq.index_add(0, inverse, (r - mean) ** 2)[inverse]  # (B,) group sum of squares
    var = sq / (count - 1).clamp(min=1)
    return (r - mean) / (var.sqrt() + eps)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A_j = r_j - mean(r): Dr. GRPO drops the std division (it biases towards easy groups)."""
    r = _check(rewards, group_ids)
    count, total, _ = _group_stats(r, group_ids)
    return r - total / count


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """A_j = r_j - mean of the other samples of the group (leave-one-out baseline)."""
    r = _check(rewards, group_ids)
    count, total, _ = _group_stats(r, group_ids)
    others = (count - 1).clamp(min=1)
    adv = r - (total - r) / others
    return torch.where(count > 1, adv, torch.zeros_like(adv))


def compute_advantages(
    name: str, rewards: torch.Tensor, group_ids: torch.Tensor, **kwargs
) -> torch.Tensor:
    """Look up estimator `name` (grpo, dr_grpo, rloo) and apply it: (B,) -> (B,)."""
    return ADVANTAGES.get(name)(rewards, group_ids, **kwargs)
