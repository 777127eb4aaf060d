"""Shared fixtures. TRITON_INTERPRET must be set before anything imports triton: without a
GPU, Triton kernels run on CPU tensors through the interpreter (NumPy), so the Triton
backend is tested here against the same oracle as every other backend."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from rgpo_fast.ops.backends import available_backends  # noqa: E402

CPU_BACKENDS = available_backends("cpu")


def pytest_report_header(config):
    return f"rgpo_fast backends on cpu: {', '.join(CPU_BACKENDS)}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    """Every backend that can run on CPU tensors here (torch always; cpp when built;
    triton under TRITON_INTERPRET=1)."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def char_tok(tmp_path_factory):
    """A character-level HF tokenizer (helpers_tokenizer.py), without a chat template."""
    from helpers_tokenizer import build_char_tokenizer

    return build_char_tokenizer(tmp_path_factory.mktemp("char_tok"))


@pytest.fixture(scope="session")
def chat_tok(tmp_path_factory):
    """The same tokenizer with a ChatML chat template."""
    from helpers_tokenizer import build_char_tokenizer

    return build_char_tokenizer(tmp_path_factory.mktemp("chat_tok"), chat=True)


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """A model cache for the trainer tests' tiny models (built once per session)."""
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture(scope="session")
def tok(char_tok):
    """The character-level tokenizer under the name the guidance tests use."""
    return char_tok
