"""rgpo_fast.rewards."""
