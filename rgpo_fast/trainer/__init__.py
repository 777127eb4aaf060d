"""rgpo_fast.trainer."""
