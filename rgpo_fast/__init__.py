"""rgpo_fast: fused-kernel RL trainer for LLM reasoning (RGPO and neighbours).

Public API (stable names; see ARCHITECTURE.md):
    fused_linear_logprobs, fused_linear_policy_loss, FusedLinearRGPOLoss
and the RL building blocks: AlgoConfig / get_preset, Rollout, RolloutBatch, assemble_batch.
"""

from rgpo_fast.algos.policy_loss import LossConfig
from rgpo_fast.algos.presets import AlgoConfig, get_preset
from rgpo_fast.batch import Rollout, RolloutBatch, assemble_batch, pack, unpack
from rgpo_fast.functional import fused_linear_logprobs, fused_linear_policy_loss
from rgpo_fast.losses import FusedLinearRGPOLoss
from rgpo_fast.ops.backends import available_backends

__version__ = "0.1.0"

__all__ = [
    "AlgoConfig",
    "FusedLinearRGPOLoss",
    "LossConfig",
    "Rollout",
    "RolloutBatch",
    "assemble_batch",
    "available_backends",
    "get_preset",
    "pack",
    "unpack",
    "fused_linear_logprobs",
    "fused_linear_policy_loss",
]
