"""The run directory: created once, owned by one live run, written with clear errors.

- `create`: the output directory, or a RunDirError naming it and why it cannot be made.
- `RunLock`: an exclusive `flock` on `<output_dir>/.lock`, held for the whole run. A second
  run on the same directory is refused with the owner's pid, host and start time. The
  kernel drops the lock when its process dies (SIGKILL, power loss), so a dead run never
  leaves it stuck; the file stays behind, harmless. flock is local to a machine: on a
  network filesystem shared by several hosts it does not exclude the other hosts.
- `writing`: turns an OSError of a run-directory write (a full disk, a read-only mount)
  into a RunDirError that says what was being written.
- `rank0_write`: the same for a write that rank 0 does on behalf of all ranks (checkpoints,
  the reference policy, the exported model): every rank learns whether it failed.
- `choose`: one run per directory. A fresh run (no `--resume`) never starts in a directory
  that holds an earlier run's work (`run_contents`): it is refused, and told how to continue
  (`--resume`) or start elsewhere; only the built-in default `runs/default` moves on to the
  next free `runs/default-<k>`, so `make train` run twice just works. `--resume` in a
  directory whose work has no usable checkpoint is refused too: starting fresh there would
  mix two runs.
- `resume_conflicts`: a resumed run is the same run. Options that define it (model, data,
  algorithm and loss, optimizer and schedule, seed, batch shape, ...) must equal the saved
  config.yaml's; only RESUMABLE options (how long, how often to save, log and evaluate,
  where and how fast to compute) may change. The trainer writes config.yaml only after every
  start-up check passed, and appends each resume's changes to config_history.jsonl.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from rgpo_fast.errors import UserError

LOCK_NAME = ".lock"
DEFAULT_DIR = "runs/default"  # TrainConfig.output_dir's default
# What a run writes that makes a directory "hold a run" (config.yaml alone does not: it is
# rewritten from the same options by a start that failed before training).
RUN_FILES = ("metrics.jsonl", "summary.json", "final", "hf", "plots", "tensorboard", "wandb")


class RunDirError(UserError):
    """The run directory cannot be created, is owned by another run, or a write failed."""


def reason(e: BaseException) -> str:
    """A short why of an I/O failure ('No space left on device', ...)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def create(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create the output directory {path}: {reason(e)}; "
                          "choose another --output-dir") from None  # fmt: skip
    if not os.access(path, os.W_OK):
        raise RunDirError(f"the output directory {path} is not writable; choose another "
                          "--output-dir")  # fmt: skip
    return path


# Options a resume may change: they do not change what the run trains. Anything else is
# compared with the saved config.yaml.
RESUMABLE = (
    "train.output_dir", "train.resume", "train.max_steps", "train.save_every",
    "train.keep_checkpoints", "train.save_hf_every", "train.device", "train.impl",
    "train.threads", "train.micro_batch_size", "train.sft_micro_batch_size",
    "train.max_nonfinite_skips", "data.reward_timeout_s", "data.reward_errors",
    "model.cache_dir", "model.gradient_checkpointing", "rollout.sync_bucket_mb",
    "eval.", "logging.",
)  # fmt: skip


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict, new: dict) -> dict[str, tuple[object, object]]:
    """{dotted key: (saved, new)} of every option whose value differs."""
    a, b = _flat(saved), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def resume_conflicts(changes: dict[str, tuple[object, object]]) -> list[str]:
    """'key: saved -> new' of the changes a resume may not make."""
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()
            if not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE)]


STEP_DIR = re.compile(r"^step_(\d+)$")  # a complete checkpoint: checkpoints/step_<n>/


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, dir) of directories named step_<n>, oldest first (temporaries ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def run_contents(path: Path) -> list[str]:
    """What of an earlier run `path` holds: checkpoint steps and RUN_FILES (empty: none)."""
    found = [f"checkpoints step {', '.join(str(s) for s, _ in steps)}"
             for steps in [list_checkpoints(path / "checkpoints")] if steps]
    for name in RUN_FILES:
        p = path / name
        if p.is_file() and p.stat().st_size > 0 or p.is_dir() and any(p.iterdir()):
            found.append(name)
    return found


def choose(path: str | Path, resume: bool, has_checkpoint: Callable[[Path], bool]) -> Path:
    """The directory this run may write to, or RunDirError (see the module docstring).
    `has_checkpoint(dir)`: whether a usable checkpoint exists there (what --resume loads)."""
    path = Path(path)
    held = run_contents(path) if path.is_dir() else []
    if resume:
        if held and not has_checkpoint(path):
            raise RunDirError(f"--resume: {path} holds an earlier run ({', '.join(held)}) but "
                              "no usable checkpoint; starting fresh there would mix two runs: "
                              "choose another --output-dir")  # fmt: skip
        return path
    if not held:
        return path
    if path.as_posix().rstrip("/") == DEFAULT_DIR:
        k = 2
        while Path(f"{DEFAULT_DIR}-{k}").is_dir() and run_contents(Path(f"{DEFAULT_DIR}-{k}")):
            k += 1
        return Path(f"{DEFAULT_DIR}-{k}")
    raise RunDirError(f"{path} holds an earlier run ({', '.join(held)}); continue it with "
                      "--resume, or choose another --output-dir (nothing there is replaced)")


@contextlib.contextmanager
def writing(what: str):
    """Context for one write into the run directory: OSError -> RunDirError(`what`)."""
    try:
        yield
    except OSError as e:
        raise RunDirError(f"cannot write {what}: {reason(e)}") from None


def rank0_write(info, write: Callable[[], None], failure: Callable[[BaseException], str]) -> None:
    """`write()` on rank 0 only, as one collective step of all ranks (`info`: DistInfo).
    An OSError, or the RuntimeError that torch.save raises for a full disk, becomes
    RunDirError(`failure(e)`) on every rank (`failure` also cleans up what was half
    written), so the ranks stop together and none waits at the barrier."""
    from rgpo_fast.trainer.distributed import barrier, broadcast_object

    message = None
    if info.is_main:
        try:
            write()
        except (OSError, RuntimeError, RunDirError) as e:
            message = failure(e)
    message = broadcast_object(message, info)
    if message is not None:
        raise RunDirError(message)
    barrier(info)


class RunLock:
    """Exclusive ownership of a run directory by this process (see module docstring)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"cannot lock {self.path}: {reason(e)}") from None
            raise RunDirError(
                f"the output directory {self.path.parent} is in use by another run "
                f"({self.owner()}); stop that run or choose another --output-dir"
            ) from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def owner(self) -> str:
        """'pid 123 on host h, started 2026-12-01 15:00:00' from the lock file."""
        try:
            o = json.loads(self.path.read_text())
            return f"pid {o['pid']} on host {o['host']}, started {o['started']}"
        except (OSError, ValueError, KeyError):
            return "owner unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
