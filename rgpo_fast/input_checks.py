"""Input checks of the public API: clear errors naming the argument, no silent broadcasting."""

from __future__ import annotations

import torch


def check_tensor(name: str, x, *, floating: bool | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating is True and not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if floating is False and (x.dtype.is_floating_point or x.dtype.is_complex):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x


def check_shape(name: str, x: torch.Tensor, expected: tuple[int, ...], what: str = "") -> None:
    if tuple(x.shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, got {tuple(x.shape)}")


def check_device(name: str, x: torch.Tensor, device: torch.device) -> None:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but hidden is on {device}")


def check_finite(name: str, x: torch.Tensor, where: torch.Tensor | None = None) -> None:
    bad = ~torch.isfinite(x)
    if where is not None:
        bad = bad & where
    if bool(bad.any()):
        raise ValueError(f"{name} contains NaN or Inf at {int(bad.sum())} position(s)")


def check_targets(targets: torch.Tensor, vocab: int, where: torch.Tensor | None = None) -> None:
    t = targets if where is None else targets[where]
    if t.numel() and (bool((t < 0).any()) or bool((t >= vocab).any())):
        raise ValueError(
            f"targets must lie in [0, {vocab}) (the weight has V={vocab} rows)"
            + ("" if where is None else " at masked positions")
            + f"; got values in [{int(t.min())}, {int(t.max())}]"
        )


def check_linear(hidden, weight, bias) -> None:
    """hidden (..., H) and weight (V, H) of one floating dtype; bias (V,)."""
    check_tensor("hidden", hidden, floating=True)
    check_tensor("weight", weight, floating=True)
    if hidden.dim() not in (2, 3):
        raise ValueError(f"hidden must be (N, H) or (B, T, H), got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be (V, H), got shape {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be (V, H) with H={hidden.shape[-1]} (hidden's last dim), "
            f"got shape {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from hidden dtype {hidden.dtype}")
    check_device("weight", weight, hidden.device)
    if bias is not None:
        check_tensor("bias", bias, floating=True)
        check_shape("bias", bias, (weight.shape[0],), "one entry per vocabulary row")
        check_device("bias", bias, hidden.device)


def check_mask(name: str, x, shapes: list[tuple[int, ...]]) -> torch.Tensor:
    """A 0/1 mask of one of `shapes`, returned as bool."""
    check_tensor(name, x)
    if tuple(x.shape) not in [tuple(s) for s in shapes]:
        allowed = " or ".join(str(tuple(s)) for s in shapes)
        raise ValueError(f"{name} must have shape {allowed}, got {tuple(x.shape)}")
    if x.dtype != torch.bool:
        if bool(((x != 0) & (x != 1)).any()):
            raise ValueError(f"{name} must contain only 0 and 1")
        x = x != 0
    return x
