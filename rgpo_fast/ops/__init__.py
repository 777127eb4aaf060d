"""rgpo_fast.ops."""
