"""Adapters that plug rgpo_fast's fused losses into other trainers.

- `rgpo_fast.integrations.trl`: `RGPOFusedGRPOTrainer`, TRL's GRPOTrainer with the fused
  policy loss (and RGPO guidance). Imported on demand: it needs `trl`.

See docs/integrations.md for the option mapping to TRL and verl.
"""
