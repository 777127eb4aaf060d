"""rgpo_fast: fused-kernel RL trainer for LLM reasoning (RGPO and neighbours).

Public API (stable names; see ARCHITECTURE.md):
    fused_linear_logprobs, fused_linear_policy_loss, FusedLinearRGPOLoss
"""

from rgpo_fast.algos.policy_loss import LossConfig
from rgpo_fast.functional import fused_linear_logprobs, fused_linear_policy_loss
from rgpo_fast.losses import FusedLinearRGPOLoss
from rgpo_fast.ops.backends import available_backends

__version__ = "0.1.0"

__all__ = [
    "FusedLinearRGPOLoss",
    "LossConfig",
    "available_backends",
    "fused_linear_logprobs",
    "fused_linear_policy_loss",
]
