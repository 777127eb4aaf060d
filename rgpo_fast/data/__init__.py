"""rgpo_fast.data."""
