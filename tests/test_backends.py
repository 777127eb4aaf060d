"""Every backend module implements the `Backend` protocol of ops/backends.py: the same
functions, with the same parameter names (the autograd Functions call them by position)."""

import importlib
import inspect

import pytest

from rgpo_fast.ops.backends import _MODULES, Backend

PROTOCOL_FUNCS = ("is_available", "logprob_forward", "logprob_backward",
                  "policy_loss_forward_backward")  # fmt: skip


def _params(fn):
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@pytest.mark.parametrize("name", sorted(_MODULES))
def test_backend_module_implements_the_protocol(name):
    try:
        mod = importlib.import_module(_MODULES[name])
    except ImportError as e:  # triton is not installable on every platform
        pytest.skip(f"{name} backend does not import here: {e}")
    assert isinstance(mod, Backend)
    assert mod.NAME == name
    for fn in PROTOCOL_FUNCS:
        assert _params(getattr(mod, fn)) == _params(getattr(Backend, fn)), (name, fn)


def test_truncated_sampler_needs_a_backend_with_thresholds(monkeypatch):
    """A backend without threshold kernels (TRUNCATION False; the CUDA backend's case) is
    refused by name for top-k / top-p log-probs, with what to use, and skipped by auto."""
    import torch

    from rgpo_fast.ops import torch_chunked
    from rgpo_fast.ops.backends import resolve_backend

    monkeypatch.setattr(torch_chunked, "TRUNCATION", False)
    cpu = torch.device("cpu")
    assert resolve_backend("torch", cpu) is torch_chunked  # untruncated: as before
    with pytest.raises(ValueError, match="impl='torch' has no kernels for the log-probs of a "
                                         "top-k / top-p sampler; use impl='triton'"):
        resolve_backend("torch", cpu, truncated=True)
    picked = resolve_backend("auto", cpu, truncated=True)
    assert picked is not torch_chunked and picked.TRUNCATION
