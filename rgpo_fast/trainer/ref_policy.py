"""The frozen reference policy of the KL term (`algo.beta` > 0).

The reference is the policy as RL starts: after the SFT warm start, or the loaded model
when there is none (verl and TRL use the initial model the same way). It is a second
`PolicyModule` built like the trained one (same device, same FSDP2 sharding, same compute
dtype; on CPU for the tiny default), its weights copied shard by shard from the policy and
never trained. Its per-token log-probs come from the same fused op as the policy's
(`update.policy_logprobs`), so the KL term never builds logits either.

A resumed run must compare against the same reference, not against its resumed weights:
the reference is saved once, to `checkpoints/reference/model.pt` (outside the pruned
`step_*` directories), and loaded from there on resume.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rgpo_fast.trainer import run_dir
from rgpo_fast.trainer.distributed import (
    DistInfo,
    full_state_dict,
    is_sharded,
    shard_model,
)
from rgpo_fast.trainer.run_dir import RunDirError

REF_FILE = Path("reference") / "model.pt"


def build_ref_policy(cfg, info: DistInfo, model_dir: Path) -> torch.nn.Module:
    """A policy module shaped and sharded like the trained one, frozen (weights: those of
    `model_dir` until `copy_weights` or `load_ref_policy` sets them)."""
    from rgpo_fast.trainer.build import load_policy

    ref, *_ = load_policy(cfg, info, model_dir)
    if info.enabled:
        ref = shard_model(ref, info, compute_dtype=ref.compute_dtype)
    ref.requires_grad_(False)
    return ref.eval()


@torch.no_grad()
def copy_weights(ref: torch.nn.Module, policy: torch.nn.Module) -> None:
    """ref <- policy, parameter by parameter (under FSDP2 both hold the same shards of
    DTensors laid out alike, so each rank copies its own shard, no communication)."""
    pairs = list(zip(ref.parameters(), policy.parameters(), strict=True))
    for r, p in pairs:
        if r.shape != p.shape:
            raise ValueError(f"reference and policy differ: {tuple(r.shape)} vs {tuple(p.shape)}")
        r.copy_(p.detach())


def save_ref_policy(ref: torch.nn.Module, ckpt_dir: Path, info: DistInfo) -> None:
    """Write the reference's full weights once (collective under FSDP2; rank 0 writes)."""
    sd = full_state_dict(ref)
    path = ckpt_dir / REF_FILE
    tmp = path.with_suffix(".tmp")

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sd, tmp)
        os.replace(tmp, path)

    def failure(e: BaseException) -> str:
        tmp.unlink(missing_ok=True)
        return f"cannot write the reference policy to {path}: {run_dir.reason(e)}"

    run_dir.rank0_write(info, write, failure)


def load_ref_policy(ref: torch.nn.Module, ckpt_dir: Path) -> None:
    """Restore the reference saved by `save_ref_policy` (every rank reads the file)."""
    path = ckpt_dir / REF_FILE
    if not path.is_file():
        raise RunDirError(f"cannot resume with algo.beta > 0: the reference policy {path} is "
                          "missing (was the run started with algo.beta = 0?)")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not is_sharded(ref):
        ref.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(ref, sd, options=StateDictOptions(full_state_dict=True))
