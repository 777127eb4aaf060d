"""rgpo_fast: fused-kernel RL trainer for LLM reasoning (RGPO and neighbours).

Public API:
    fused_linear_logprobs, fused_linear_policy_loss, FusedLinearRGPOLoss, LossConfig
and the RL building blocks: AlgoConfig / get_preset, Sample, TrainBatch, assemble_batch,
guided_round.
"""

from rgpo_fast.algos.policy_loss import LossConfig
from rgpo_fast.algos.presets import AlgoConfig, get_preset
from rgpo_fast.batch import TrainBatch, assemble_batch
from rgpo_fast.data.types import Sample
from rgpo_fast.functional import fused_linear_logprobs, fused_linear_policy_loss
from rgpo_fast.guided_round import guided_round
from rgpo_fast.losses import FusedLinearRGPOLoss
from rgpo_fast.ops.backends import available_backends

__version__ = "0.1.0"

__all__ = [
    "AlgoConfig",
    "FusedLinearRGPOLoss",
    "LossConfig",
    "Sample",
    "TrainBatch",
    "assemble_batch",
    "available_backends",
    "get_preset",
    "guided_round",
    "fused_linear_logprobs",
    "fused_linear_policy_loss",
]
