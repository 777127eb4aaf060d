"""Mixed precision in one place: fp32 master weights, matmuls in a compute dtype.

Parameters stay fp32 (an AdamW step at lr 1e-6 is below half a bf16 ulp for most weights:
bf16 parameters would mostly not move). Where the module itself holds those fp32
parameters (a single process, or a sampling engine sharing them), forward runs under
`torch.autocast` to the compute dtype; under FSDP2 the gathered parameters are cast by its
`MixedPrecisionPolicy` instead (trainer/distributed.shard_model).
"""

from __future__ import annotations

import contextlib

import torch


def autocast_to(device: torch.device, dtype: torch.dtype | None):
    """A context that runs matmuls in `dtype` on `device`; a no-op for None or fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
