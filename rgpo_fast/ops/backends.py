"""Backend registry: which implementation of the fused ops runs for `impl=...`.

A backend is a module that implements the `Backend` protocol below: torch_chunked.py,
triton_backend.py, cpp_backend.py and cuda_backend.py (tests/test_backends.py checks each
against it).

"auto" picks, in order: triton for CUDA tensors, then the compiled extension (cuda on
GPU, cpp on CPU), then torch. Backends are imported lazily so a missing Triton or an
unbuilt extension never breaks `import rgpo_fast`.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import torch

from rgpo_fast.algos.policy_loss import LossConfig, TokenTerms

Tensor = torch.Tensor
Grads = tuple[Tensor | None, Tensor | None, Tensor | None]  # dhidden, dweight, dbias


@runtime_checkable
class Backend(Protocol):
    """The fused ops one implementation provides (shapes: N tokens, H hidden, V vocab).

    TRUNCATION: whether its log-prob ops take `threshold=` (N,) fp32, the per-row cut of a
    truncated sampler (ops/truncation.py); a backend without it is refused for top-k /
    top-p log-probs (explicitly named) or skipped (impl="auto"). ROUNDED_LOGITS: whether it
    rounds 16-bit logits to the input dtype (the thresholds are found on the same logits)."""

    NAME: str
    TRUNCATION: bool
    ROUNDED_LOGITS: bool

    def is_available(self, device: torch.device) -> bool:
        """Can it run on `device` in this installation?"""
        ...

    def logprob_forward(self, hidden: Tensor, weight: Tensor, bias: Tensor | None,
                        targets: Tensor, temperature: float, with_entropy: bool,
                        chunk_size: int | None = None, threshold: Tensor | None = None,
                        ) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
        """(N, H), (V, H), (V,)|None, (N,) -> logp, lse, entropy|None: fp32 (N,) each;
        `threshold` (N,) only where TRUNCATION."""
        ...

    def logprob_backward(self, hidden: Tensor, weight: Tensor, bias: Tensor | None,
                         targets: Tensor, lse: Tensor, entropy: Tensor | None,
                         temperature: float, g_logp: Tensor, g_ent: Tensor | None,
                         needs: tuple[bool, bool, bool], chunk_size: int | None = None,
                         threshold: Tensor | None = None,
                         ) -> Grads:  # fmt: skip
        """Gradients of sum(g_logp * logp + g_ent * entropy), None where `needs` is False."""
        ...

    def policy_loss_forward_backward(self, hidden: Tensor, weight: Tensor,
                                     bias: Tensor | None, targets: Tensor, terms: TokenTerms,
                                     cfg: LossConfig, needs: tuple[bool, bool, bool],
                                     with_entropy: bool = False, chunk_size: int | None = None,
                                     ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None,
                                                Tensor | None]:  # fmt: skip
        """The fused policy loss: loss () fp32, stats (NUM_STATS,) fp32 and the gradients,
        all from one forward (each token's loss depends on its own log-prob only)."""
        ...


IMPLS = ("auto", "torch", "triton", "cpp", "cuda")
_MODULES = {
    "torch": "rgpo_fast.ops.torch_chunked",
    "triton": "rgpo_fast.ops.triton_backend",
    "cpp": "rgpo_fast.ops.cpp_backend",
    "cuda": "rgpo_fast.ops.cuda_backend",
}
_AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")}


def _load(name: str) -> Backend | None:
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


def resolve_backend(impl: str, device: torch.device, truncated: bool = False) -> Backend:
    """The backend module for `impl` on `device`; a clear error when it cannot run there.
    `truncated`: the log-probs are those of a top-k / top-p sampler (the backend must take
    per-row thresholds)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if impl == "auto":
        for name in _AUTO_ORDER.get(device.type, ("torch",)):
            mod = _load(name)
            if mod is not None and mod.is_available(device) and (mod.TRUNCATION or
                                                                  not truncated):
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
    if truncated and not mod.TRUNCATION:
        raise ValueError(
            f"impl={impl!r} has no kernels for the log-probs of a top-k / top-p sampler; "
            "use impl='triton' (GPU), impl='torch' or impl='auto' (which picks one that has)")
    return mod
