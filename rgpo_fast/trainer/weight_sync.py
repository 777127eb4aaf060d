"""Trainer -> rollout-engine weight sync: the protocol, name mapping, size-bounded buckets.

Protocol of a colocated engine after each optimizer step (`sync_engine`):

    wake_up(["weights"]) -> load_weights(bucket) ... -> wake_up(["kv_cache"])

(the engine resets its prefix cache inside load_weights). Waking the weights before the
KV cache keeps the peak below one model copy plus the KV cache.

The trainer's parameters are named `lm.<HF name>` (PolicyModule), possibly with wrapper
prefixes from activation checkpointing or torch.compile; engines (HF replica, vLLM's
`model.load_weights`) expect plain HF names. Full tensors are gathered one parameter at a
time under FSDP2 and handed over in buckets of at most `bucket_bytes`, so the extra
memory during a sync is one bucket, not one model copy. A bucket sent in bf16 (the fp32
master weights to a bf16 engine) is cast into one packed buffer (`pack_params_bf16`: one
kernel launch on CUDA) and handed over as views of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

# Prefixes added by our wrapper, activation checkpointing and torch.compile.
_WRAPPER_PREFIXES = ("lm.", "_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def hf_name(name: str) -> str:
    """Trainer parameter name -> HF checkpoint name (wrapper prefixes removed anywhere)."""
    for pre in _WRAPPER_PREFIXES:
        if name.startswith(pre):
            name = name[len(pre):]
        name = name.replace("." + pre, ".")
    return name


def bucketed(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
             ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into lists whose total size stays <= bucket_bytes (a
    tensor larger than a bucket travels alone). Order is preserved."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named:
        n = t.numel() * t.element_size()
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += n
    if bucket:
        yield bucket


def full_named_parameters(model: torch.nn.Module, dtype: torch.dtype | None = None
                          ) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) per parameter, cast to `dtype` if given; DTensor shards are
    all-gathered (collective: every rank must iterate in the same order). Tied weights are
    yielded once, under the first name (the engine re-ties them)."""
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        if dtype is not None:
            t = t.to(dtype)
        yield hf_name(name), t


def sync_weights(model: torch.nn.Module, engine, bucket_mb: int, dtype: torch.dtype | None = None
                 ) -> int:
    """Push the trainer's weights into `engine` in buckets, in `dtype` (None: as they are);
    returns bytes sent. The caller wakes the engine's weights first and its KV cache after
    (`sync_engine` does the whole protocol)."""
    from rgpo_fast.ops.cuda_backend import pack_params_bf16, unpack_views

    packed = dtype == torch.bfloat16
    sent = 0
    named = full_named_parameters(model, None if packed else dtype)
    for bucket in bucketed(named, bucket_mb * 2**20):
        if packed:  # one cast into one buffer per bucket; the engine copies from views
            names = [n for n, _ in bucket]
            buf, offsets = pack_params_bf16([t for _, t in bucket])
            bucket = list(zip(names, unpack_views(buf, offsets, [t.shape for _, t in bucket])))
        engine.load_weights(bucket)
        sent += sum(t.numel() * t.element_size() for _, t in bucket)
    return sent


def sync_engine(policy: torch.nn.Module, engine, *, shares_weights: bool, bucket_mb: int,
                dtype: torch.dtype | None = None) -> None:
    """The whole protocol after an optimizer step: wake the weights, load them (unless the
    engine shares the trainer's module), wake the KV cache."""
    engine.wake_up(["weights"])
    if not shares_weights:
        sync_weights(policy, engine, bucket_mb, dtype)
    engine.wake_up(["kv_cache"])
