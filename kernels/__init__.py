"""Triton kernels of rgpo_fast, installed as the sub-package `rgpo_fast.kernels`."""
