"""rgpo_fast.integrations."""
