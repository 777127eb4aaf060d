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

    Options are validated at construction; per-call tensors as in
    `rgpo_fast.functional.fused_linear_policy_loss`.
    """

    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        clip_ratio_c: float | None = None,
        beta: float = 0.0,
        kl_estimator: str = "k3",
        sft_coef: float = 1e-3,
        loss_agg: str = "token-mean",
        temperature: float = 1.0,
        luffy_gamma: float = 0.1,
        tis_cap: float = 2.0,
        impl: str = "auto",
        chunk_size: int | None = None,
        return_entropy: bool = False,
    ) -> None:
        super().__init__()
        self.config = LossConfig(
            clip_low,
            clip_high,
            clip_ratio_c,
            beta,
            kl_estimator,
            sft_coef,
            loss_agg,
            temperature,
            luffy_gamma,
            tis_cap,
        )
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
        *,
        bias: torch.Tensor | None = None,
        old_logprobs: torch.Tensor | None = None,
        ref_logprobs: torch.Tensor | None = None,
        hint_mask: torch.Tensor | None = None,
        sft_mask: torch.Tensor | None = None,
        offpolicy_mask: torch.Tensor | None = None,
        rollout_logprobs: torch.Tensor | None = None,
        **normalisers,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        return fused_linear_policy_loss(
            hidden,
            weight,
            targets,
            mask,
            advantages,
            bias=bias,
            old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs,
            hint_mask=hint_mask,
            sft_mask=sft_mask,
            offpolicy_mask=offpolicy_mask,
            rollout_logprobs=rollout_logprobs,
            clip_low=c.clip_low,
            clip_high=c.clip_high,
            clip_ratio_c=c.clip_ratio_c,
            beta=c.beta,
            kl_estimator=c.kl_estimator,
            sft_coef=c.sft_coef,
            loss_agg=c.loss_agg,
            temperature=c.temperature,
            luffy_gamma=c.luffy_gamma,
            tis_cap=c.tis_cap,
            return_entropy=self.return_entropy,
            impl=self.impl,
            chunk_size=self.chunk_size,
            **normalisers,
        )

    def extra_repr(self) -> str:
        return f"{self.config}, impl={self.impl!r}"
