"""Pure tensor functions of RL maths: advantages, aggregation, per-token policy losses."""

from rgpo_fast.algos.advantages import ADVANTAGES, compute_advantages
from rgpo_fast.algos.aggregation import AGG_MODES, aggregation_weights, global_counts

__all__ = ["ADVANTAGES", "AGG_MODES", "aggregation_weights", "compute_advantages", "global_counts"]
