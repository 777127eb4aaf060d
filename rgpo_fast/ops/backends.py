"""Backend registry: which implementation of the fused ops runs for `impl=...`.

A backend is a module with
  NAME, is_available(device) -> bool,
  logprob_forward(hidden, weight, bias, targets, temperature, with_entropy, chunk_size)
      -> (logp, lse, entropy|None), fp32 (N,)
  logprob_backward(hidden, weight, bias, targets, lse, entropy, temperature,
                   g_logp, g_ent, needs, chunk_size) -> (dhidden, dweight, dbias)
and optionally
  policy_loss_forward_backward(hidden, weight, bias, targets, terms, cfg, needs,
                               with_entropy, chunk_size) -> (loss, stats, dh, dw, db)
When the last one is missing, ops/linear_policy_loss.py composes the first two with
algos.policy_loss.token_loss_and_grad.

"auto" picks, in order: triton for CUDA tensors, then the compiled extension (cuda on
GPU, cpp on CPU), then torch. Backends are imported lazily so a missing Triton or an
unbuilt extension never breaks `import rgpo_fast`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

IMPLS = ("auto", "torch", "triton", "cpp", "cuda")
_MODULES = {
    "torch": "rgpo_fast.ops.torch_chunked",
    "triton": "rgpo_fast.ops.triton_backend",
    "cpp": "rgpo_fast.ops.cpp_backend",
    "cuda": "rgpo_fast.ops.cuda_backend",
}
_AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")}


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:
        return None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on `device` in this installation."""
    device = torch.device(device)
    out = []
    for name in _MODULES:
        mod = _load(name)
        if mod is not None and mod.is_available(device):
            out.append(name)
    return out


def resolve_backend(impl: str, device: torch.device) -> ModuleType:
    """The backend module for `impl` on `device`; a clear error when it cannot run there."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if impl == "auto":
        for name in _AUTO_ORDER.get(device.type, ("torch",)):
            mod = _load(name)
            if mod is not None and mod.is_available(device):
                return mod
        return _load("torch")
    mod = _load(impl)
    if mod is None:
        raise RuntimeError(
            f"impl={impl!r} is not installed (backend module {_MODULES[impl]} failed to "
            f"import); available here: {', '.join(available_backends(device))}"
        )
    if not mod.is_available(device):
        raise RuntimeError(
            f"impl={impl!r} cannot run on device {device}; "
            f"available here: {', '.join(available_backends(device))}"
        )
    return mod
