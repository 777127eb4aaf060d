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
