"""rgpo_fast: fused-kernel RL trainer for LLM reasoning (RGPO and neighbours)."""
