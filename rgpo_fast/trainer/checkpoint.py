"""Atomic checkpoints: model, optimizer, scheduler, RNG, hint levels, data position, step.

Layout: `<output>/checkpoints/step_<n>/{model.pt, optim.pt, state.pt, manifest.json}`.
A checkpoint is written into `.tmp-step_<n>` and renamed into place only after every file
(manifest last, with sizes and SHA-256 of the others) is on disk, so a directory named
`step_<n>` is complete unless its files were damaged later. Loading verifies the manifest
and falls back to the previous complete checkpoint with a clear warning.

Under FSDP2 the model and optimizer are gathered as full state dicts (collective, all
ranks), rank 0 writes, and every rank loads the full dicts back with
`set_model_state_dict` / `set_optimizer_state_dict`. That keeps checkpoints portable
across world sizes; for models far beyond a few billion parameters, sharded
torch.distributed.checkpoint would avoid the rank-0 gather (not needed at our scale).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from rgpo_fast.trainer.distributed import DistInfo, is_sharded
from rgpo_fast.trainer.run_dir import list_checkpoints, rank0_write, reason

HASH_LIMIT = 2 * 2**30  # files above 2 GiB are checked by size only (hashing is slow)


class CheckpointError(RuntimeError):
    """A checkpoint on disk is incomplete or damaged (load_latest skips it with a warning)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def _model_and_optim_state(policy, optimizer) -> tuple[dict, dict]:
    if not is_sharded(policy):
        return policy.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(policy, options=opts),
        get_optimizer_state_dict(policy, optimizer, options=opts),
    )


def save_checkpoint(
    root: str | Path,
    step: int,
    policy,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    info: DistInfo,
    keep: int = 2,
) -> Path | None:
    """Write step_<step> atomically (collective under FSDP2); prune to `keep` newest."""
    root = Path(root)
    model_sd, optim_sd = _model_and_optim_state(policy, optimizer)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"

    def failure(e: BaseException) -> str:
        shutil.rmtree(tmp, ignore_errors=True)
        return _save_failure(root, step, e)

    rank0_write(info, lambda: _write(root, tmp, final, step, model_sd, optim_sd, scheduler,
                                     trainer_state, keep), failure)  # fmt: skip
    return final if info.is_main else None


def _write(root: Path, tmp: Path, final: Path, step: int, model_sd, optim_sd, scheduler,
           trainer_state: dict[str, Any], keep: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(model_sd, tmp / "model.pt")
    torch.save(optim_sd, tmp / "optim.pt")
    torch.save({"step": step, "scheduler": scheduler.state_dict() if scheduler else None,
                "rng": rng_state(), **trainer_state}, tmp / "state.pt")  # fmt: skip
    files = {}
    for name in ("model.pt", "optim.pt", "state.pt"):
        p = tmp / name
        size = p.stat().st_size
        files[name] = {"size": size, "sha256": _sha256(p) if size <= HASH_LIMIT else None}
    manifest = {"step": step, "files": files, "format": 1}
    with (tmp / "manifest.json").open("w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)  # atomic on POSIX within one filesystem
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old[1], ignore_errors=True)


def _save_failure(root: Path, step: int, e: BaseException) -> str:
    """The one-line story of a failed save: which step, why, what is still there."""
    why = reason(e)
    try:
        free = shutil.disk_usage(root if root.exists() else root.parent).free
    except OSError:
        free = None
    if free is not None and free < 2**20 and "space" not in why.lower():
        why += f" (the disk is full: {free} bytes free)"
    done = list_checkpoints(root)
    last = (f"the last complete checkpoint is {done[-1][1]} (step {done[-1][0]}); "
            "--resume continues from it") if done else "no complete checkpoint exists"
    return f"could not save the checkpoint of step {step} in {root}: {why}; {last}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify(path: Path) -> None:
    """Raise CheckpointError naming what is wrong with checkpoint `path`."""
    man = path / "manifest.json"
    if not man.is_file():
        raise CheckpointError("manifest.json missing (incomplete write)")
    try:
        manifest = json.loads(man.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"manifest.json unreadable ({e})") from None
    for name, meta in manifest.get("files", {}).items():
        p = path / name
        if not p.is_file():
            raise CheckpointError(f"{name} missing")
        if p.stat().st_size != meta["size"]:
            raise CheckpointError(
                f"{name} is truncated ({p.stat().st_size} of {meta['size']} bytes)"
            )
        if meta.get("sha256") and _sha256(p) != meta["sha256"]:
            raise CheckpointError(f"{name} is corrupt (checksum mismatch)")


def has_usable_checkpoint(root: str | Path) -> bool:
    """Whether `root` holds a checkpoint that passes `verify` (what load_latest can use)."""
    for _, path in list_checkpoints(root):
        try:
            verify(path)
            return True
        except CheckpointError:
            continue
    return False


def load_latest(
    root: str | Path, policy, optimizer, scheduler, info: DistInfo, log=print
) -> dict[str, Any] | None:
    """Restore the newest complete checkpoint; warn about and skip broken ones.

    Returns the trainer state dict (step, hint levels, data position...) or None when no
    usable checkpoint exists.
    """
    for step, path in reversed(list_checkpoints(root)):
        try:
            verify(path)
            model_sd = torch.load(path / "model.pt", map_location="cpu", weights_only=False)
            optim_sd = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        except (CheckpointError, RuntimeError, EOFError, OSError, ValueError) as e:
            if info.is_main:
                log(
                    f"warning: checkpoint {path} is unusable: {e}; trying the previous one",
                    file=sys.stderr,
                )
            continue
        _restore(policy, optimizer, model_sd, optim_sd)
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if info.is_main:
            log(f"resuming from {path} (step {step})")
        return state
    return None


def _restore(policy, optimizer, model_sd, optim_sd) -> None:
    if not is_sharded(policy):
        policy.load_state_dict(model_sd)
        optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(policy, model_sd, options=opts)
    set_optimizer_state_dict(policy, optimizer, optim_sd, options=opts)
