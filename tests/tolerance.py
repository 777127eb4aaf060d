"""The three-way tolerance rule (STYLE.md 7): compare a backend and the same-dtype naive
PyTorch against a float64 ground truth; the backend may be at most twice as wrong as
naive PyTorch in the same dtype, plus a small absolute slack."""

import torch

TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def max_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    """Max abs error, relative to the scale of the truth (so gradients of any size compare)."""
    scale = truth.double().abs().max().item() + 1e-3
    return (x.double() - truth.double()).abs().max().item() / scale


def assert_three_way(name, got, naive, truth, dtype):
    eb, en = max_err(got, truth), max_err(naive, truth)
    tol = TOL[dtype]
    assert eb <= 2 * en + tol, f"{name}: backend err {eb:.3g} > 2 * naive err {en:.3g} + {tol}"
