"""rgpo_fast.rollout."""
