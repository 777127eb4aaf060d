"""Pure functions of RL maths: advantages, aggregation, per-token policy losses, guidance
decisions (RGPO, GHPO), dynamic sampling, and the presets that combine them. No record
types and no tokenizers here (rgpo_fast/guided_round.py adds those)."""

from rgpo_fast.algos.advantages import ADVANTAGES, compute_advantages
from rgpo_fast.algos.aggregation import AGG_MODES, aggregation_weights, global_counts
from rgpo_fast.algos.guidance import (
    HintLevels,
    accept,
    build_hint,
    needs_guidance,
    segment_rationale,
    update_level,
)
from rgpo_fast.algos.policy_loss import OBJECTIVES, LossConfig, token_loss_and_grad
from rgpo_fast.algos.presets import AlgoConfig, get_preset, preset_names
from rgpo_fast.algos.sequence_loss import gspo_objective  # registers objective "gspo"

__all__ = [
    "ADVANTAGES",
    "AGG_MODES",
    "AlgoConfig",
    "HintLevels",
    "LossConfig",
    "OBJECTIVES",
    "accept",
    "aggregation_weights",
    "build_hint",
    "compute_advantages",
    "get_preset",
    "global_counts",
    "gspo_objective",
    "needs_guidance",
    "preset_names",
    "segment_rationale",
    "token_loss_and_grad",
    "update_level",
]
