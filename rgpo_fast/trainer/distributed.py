"""Process-group setup, FSDP2 sharding and the few collectives the trainer needs.

One code path for every launch: a plain `python -m rgpo_fast.train` is a world of one (no
process group), `torchrun` sets RANK/WORLD_SIZE/LOCAL_RANK and we join NCCL on GPUs or gloo
on CPU. Multi-node is the same through torchrun's rendezvous (see docs/trainer.md).

Gradient normalisation under data parallelism: the loss on each rank is already divided
by GLOBAL counts (all-reduced token / sequence numbers), so the gradient of the global
loss is the SUM of the ranks' gradients. FSDP2 averages by default (divides by the world
size); `set_gradient_divide_factor(1.0)` turns that into a sum, which is what makes a
2-process step equal a 1-process step on the same global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rgpo_fast import vlm


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun; pick the device of this rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(device=dev)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def shutdown(info: DistInfo) -> None:
    """Leave the process group. On gloo, destroy_process_group() intermittently aborts
    ("terminate called without an active exception") in torch 2.13 while its background
    threads unwind; a final barrier and letting process exit tear gloo down is reliable."""
    if not (info.enabled and dist.is_initialized()):
        return
    dist.barrier()
    if info.backend == "nccl":
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _all_reduce(t: torch.Tensor, info: DistInfo, op) -> torch.Tensor:
    """`op` over ranks on a copy of `t` (on the process-group device and back); identity
    in a world of one."""
    if not info.enabled:
        return t
    out = t.detach().clone().to(info.device)
    dist.all_reduce(out, op=op)
    return out.to(t.device)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks (returns a new tensor; identity in a world of one)."""
    return _all_reduce(t, info, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise max over ranks (returns a new tensor; identity in a world of one)."""
    return _all_reduce(t, info, dist.ReduceOp.MAX)


def all_reduce_max_int(value: int, info: DistInfo) -> int:
    return int(all_reduce_max(torch.tensor([value], dtype=torch.long), info).item())


def broadcast_object(obj, info: DistInfo):
    """Rank 0's Python object on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Transformer blocks of a HF causal LM (model.model.layers for Llama/Qwen style; a
    vision-language model's language model: model.model.language_model.layers)."""
    model = getattr(model, "lm", model)  # PolicyModule wraps the HF model
    base = getattr(model, "model", model)
    base = getattr(base, "language_model", base)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers on {type(model).__name__}")
    return list(layers)


def shard_model(model: torch.nn.Module, info: DistInfo,
                compute_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """FSDP2: shard every decoder layer and the root; gradients summed over ranks.

    Each layer is its own FSDP unit, so only one layer's full parameters are gathered at a
    time; a vision tower's blocks too, and the rest of the tower (patch embedding, merger)
    is one more unit. Tied embeddings stay in the root unit with lm_head (same parameter
    object).

    Mixed precision: the sharded parameters stay in their dtype (fp32 master weights, what
    the optimizer updates); with a narrower `compute_dtype` they are all-gathered in it for
    forward and backward, and gradients are reduce-scattered in fp32 (a bf16 sum over ranks
    loses the small contributions). The root's forward inputs are NOT cast: the loss inputs
    (advantages, old / reference / rollout log-probs, the global token counts) reach it as
    keyword arguments, and FSDP2's default cast would round them to bf16 (-7.3 -> -7.3125,
    10001 -> 9984: a ratio off by ~1.6 % at log-probs of 4-8). The decoder layers still cast
    theirs (hidden states, which the compute dtype is for).
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    layer_kw, root_kw = {}, {}
    master = next(model.parameters()).dtype
    if compute_dtype is not None and compute_dtype != master:
        layer_kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype,
                                                     reduce_dtype=torch.float32)
        root_kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype,
                                                    reduce_dtype=torch.float32,
                                                    cast_forward_inputs=False)
    for layer in decoder_layers(model):
        fully_shard(layer, **layer_kw)
    tower = vlm.vision_tower(getattr(model, "lm", model))
    if tower is not None:  # a vision-language model: its blocks, then the rest of the tower
        for block in getattr(tower, "blocks", []):
            fully_shard(block, **layer_kw)
        fully_shard(tower, **layer_kw)
    fully_shard(model, **root_kw)
    # Sum, don't average (see module docstring). Both setters act on one FSDP unit only, so
    # every unit gets them. Forcing plain SUM collectives also keeps gloo working: a divide
    # factor otherwise becomes NCCL's PREMUL_SUM, which gloo does not implement.
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model: torch.nn.Module, *, cpu_offload: bool = True) -> dict[str, torch.Tensor]:
    """Full (unsharded) parameters by HF name; collective under FSDP2 (all ranks call it)."""
    if not is_sharded(model):
        return {k: (v.detach().cpu() if cpu_offload else v.detach())
                for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload))


