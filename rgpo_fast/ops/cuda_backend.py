"""The CUDA backend ("cuda"): the same torch.ops.rgpo_fast.* ops, dispatched to the CUDA
kernels of rgpo_fast._C_cuda (csrc/cuda/) for CUDA tensors.

The op wrappers are those of cpp_backend (one schema, two device implementations); this
module only decides availability: a CUDA device and both extensions importable (the CUDA
module adds implementations to the schemas that rgpo_fast._C defines).

`pack_params_bf16` packs many parameters into one bf16 buffer for the weight sync into the
rollout engine: one kernel launch on CUDA, a PyTorch copy loop elsewhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch

from rgpo_fast.ops import cpp_backend
from rgpo_fast.ops.cpp_backend import (  # noqa: F401  (the backend protocol)
    logprob_backward,
    logprob_forward,
    policy_loss_forward_backward,
    token_loss_and_grad,
)

NAME = "cuda"
TRUNCATION = False  # the CUDA epilogue takes no threshold (csrc/cuda/bindings_cuda.cpp)
ROUNDED_LOGITS = True  # cuBLAS with a 16-bit output (csrc/cuda)
EXTENSION = "rgpo_fast._C_cuda"
# Offsets of packed tensors are multiples of this many bf16 elements (16 bytes), so a view
# of any packed tensor is aligned for vectorised loads by whoever consumes the buffer.
PACK_ALIGN = 8
_state: dict = {"loaded": None, "error": None}


def load_extension() -> bool:
    """Import rgpo_fast._C then rgpo_fast._C_cuda once; True when both are there."""
    if _state["loaded"] is None:
        if not cpp_backend.load_extension():
            _state["loaded"], _state["error"] = False, "rgpo_fast._C is not built"
        else:
            try:
                importlib.import_module(EXTENSION)
            except ImportError as exc:
                _state["loaded"], _state["error"] = False, exc
            else:
                _state["loaded"] = True
    return bool(_state["loaded"])


def is_available(device: torch.device) -> bool:
    return (
        torch.device(device).type == "cuda" and torch.cuda.is_available() and load_extension()
    )


def pack_offsets(numels: Sequence[int], align: int = PACK_ALIGN) -> tuple[list[int], int]:
    """Start offset of each tensor in the packed buffer (each a multiple of `align`) and the
    buffer length (the end of the last tensor, unpadded)."""
    offsets, pos = [], 0
    for n in numels:
        pos = -(-pos // align) * align  # round up to the alignment
        offsets.append(pos)
        pos += int(n)
    return offsets, pos


def pack_params_bf16(
    tensors: Sequence[torch.Tensor], align: int = PACK_ALIGN
) -> tuple[torch.Tensor, list[int]]:
    """Cast and copy `tensors` (fp32/bf16/fp16, any shapes) into one 1-D bf16 buffer.

    Returns (buffer, offsets): tensor i is buffer[offsets[i] : offsets[i] + numel_i] viewed as
    its shape; padding between tensors is zero. On CUDA with the extension built this is ONE
    kernel launch (rgpo_fast::pack_bf16); otherwise a copy per tensor (same result, the
    rounding of .to(torch.bfloat16), round-to-nearest-even).
    """
    if len(tensors) == 0:
        raise ValueError("pack_params_bf16 needs at least one tensor")
    device = tensors[0].device
    for i, t in enumerate(tensors):
        if not t.is_floating_point():
            raise TypeError(f"tensor {i} has dtype {t.dtype}; pack_params_bf16 packs floats")
        if t.device != device:
            raise ValueError(f"tensor {i} is on {t.device}, tensor 0 on {device}")
    offsets, total = pack_offsets([t.numel() for t in tensors], align)
    fast = device.type == "cuda" and load_extension() and all(
        t.dtype in (torch.float32, torch.bfloat16, torch.float16) for t in tensors
    )
    with torch.no_grad():
        if fast:
            buf = torch.ops.rgpo_fast.pack_bf16([t.detach() for t in tensors], offsets, total)
        else:
            buf = torch.zeros(total, dtype=torch.bfloat16, device=device)
            for t, off in zip(tensors, offsets):
                buf[off : off + t.numel()].copy_(t.detach().reshape(-1))
    return buf, offsets


def unpack_views(buffer: torch.Tensor, offsets: Sequence[int], shapes) -> list[torch.Tensor]:
    """Views of the packed tensors in `buffer` (no copy)."""
    out = []
    for off, shape in zip(offsets, shapes):
        n = 1
        for d in shape:
            n *= int(d)
        out.append(buffer[off : off + n].view(tuple(shape)))
    return out
