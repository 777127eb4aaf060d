"""The GPU stack's versions, checked at start-up with one clear message on a mismatch.

vLLM pins the torch it was built against exactly (vllm 0.33.0 needs torch 2.14.0); a newer
torch taken by a bare `pip install torch` makes vLLM fail deep inside its import or its
CUDA kernels. `make install-gpu` installs the tested pair (TESTED); this module compares
what is installed with vLLM's own requirement, before any model is loaded.
"""

from __future__ import annotations

from importlib import metadata

from rgpo_fast.errors import UserError

# The set this project's GPU path was written against (Makefile: install-gpu).
TESTED = {"torch": "2.14.0", "vllm": "0.33.0"}
# Oldest vLLM with logprobs_mode="processed_logprobs" (log-probs after temperature, the
# quantity the trainer recomputes for truncated importance sampling).
MIN_VLLM = "0.10.2"
MIN_TORCH = "2.11"  # setup.py's floor (the GPU image's torch); FSDP2 here needs >= 2.8


class VersionError(UserError, RuntimeError):
    """An installed package version the GPU path cannot run with."""


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _parse(v: str):
    from packaging.version import Version

    return Version(v)


def torch_pin_of(vllm_requires: list[str] | None) -> str | None:
    """The `torch==X` pin among vLLM's requirements (None if it pins none)."""
    from packaging.requirements import Requirement

    for line in vllm_requires or []:
        req = Requirement(line)
        if req.name == "torch" and req.marker is None:
            pins = [s.version for s in req.specifier if s.operator == "=="]
            if pins:
                return pins[0]
    return None


def check_gpu_stack(torch_version: str | None = None, vllm_version: str | None = None,
                    vllm_requires: list[str] | None = None) -> None:
    """Raise VersionError naming the packages and the install command on a mismatch.

    Arguments default to what is installed (tests pass their own)."""
    torch_version = torch_version or installed("torch")
    vllm_version = vllm_version or installed("vllm")
    fix = "run `make install-gpu` (torch {torch} + vllm {vllm})".format(**TESTED)
    if torch_version is None:
        raise VersionError(f"torch is not installed; {fix}")
    if _parse(torch_version).release < _parse(MIN_TORCH).release:
        raise VersionError(f"torch {torch_version} is older than {MIN_TORCH}, the oldest "
                           f"tested (setup.py); {fix}")
    if vllm_version is None:
        raise VersionError(f"rollout.engine=vllm but vllm is not installed; {fix}")
    if _parse(vllm_version) < _parse(MIN_VLLM):
        raise VersionError(f"vllm {vllm_version} is older than {MIN_VLLM} (no "
                           f"logprobs_mode=processed_logprobs); {fix}")
    if vllm_requires is None:
        vllm_requires = metadata.requires("vllm")
    pin = torch_pin_of(vllm_requires)
    # Compare release numbers: a local build tag (2.14.0+cu128) is the same torch.
    if pin is not None and _parse(torch_version).release != _parse(pin).release:
        raise VersionError(f"vllm {vllm_version} was built for torch {pin} but torch "
                           f"{torch_version} is installed; {fix}")
