"""nn.Module wrappers of the fused losses, for other trainers (TRL, verl, plain loops)."""

from __future__ import annotations

import torch
from torch import nn

from rgpo_fast.algos.policy_loss import LossConfig
from rgpo_fast.functional import fused_linear_policy_loss


class FusedLinearRGPOLoss(nn.Module):
    """Clipped, hint-masked policy loss (+ KL, + SFT transfer) from hidden states.

    >>> loss_fn = FusedLinearRGPOLoss(clip_low=0.2, clip_high=0.28, loss_agg="token-mean")
    >>> loss, metrics = loss_fn(hidden, model.lm_head.weight, targets, mask, advantages)

    Loss options are the fields of `LossConfig` (as keywords, or `config=`), validated at
    construction; per-call tensors as in `rgpo_fast.functional.fused_linear_policy_loss`.
    """

    def __init__(self, *, config: LossConfig | None = None, impl: str = "auto",
                 chunk_size: int | None = None, return_entropy: bool = False,
                 **options) -> None:  # fmt: skip
        super().__init__()
        self.config = LossConfig.build(config, **options)
        self.impl = impl
        self.chunk_size = chunk_size
        self.return_entropy = return_entropy

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        advantages: torch.Tensor,
        **tensors_and_normalisers,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """bias, old/ref/rollout log-probs, hint/sft/offpolicy masks and num_global_* as
        keywords, as in `fused_linear_policy_loss`."""
        return fused_linear_policy_loss(
            hidden, weight, targets, mask, advantages, config=self.config,
            return_entropy=self.return_entropy, impl=self.impl, chunk_size=self.chunk_size,
            **tensors_and_normalisers,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"{self.config}, impl={self.impl!r}"
