"""Build script for rgpo_fast.

The Triton sources in `kernels/` are the sub-package `rgpo_fast.kernels`: a wheel gets copies
of them in rgpo_fast/kernels/ (`BuildPyWithKernels`), an editable install or a bare source tree
finds them through rgpo_fast/kernels/__init__.py. `kernels/` itself has no `__init__.py`, so it
never shadows the PyPI package `kernels` (transformers imports it) when the repository root is
on sys.path. The native extension `rgpo_fast._C`
(csrc/) is added by `_native_extensions()`; torch is imported only there, inside the
build step, so `pip install --no-build-isolation -e .` uses the torch already installed.
"""

import os
import platform
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)  # PEP 517 builds do not put the project root on sys.path


def _native_extensions():
    """C++ (CPU) and CUDA extensions; empty when skipped or when torch is missing."""
    try:
        from _build_native import native_extensions  # noqa: PLC0415 (build-time only)
    except ImportError:
        return [], {}
    return native_extensions(ROOT)


class BuildPyWithKernels(build_py):
    """build_py that also copies the Triton sources (kernels/*.py) into rgpo_fast/kernels/ of
    the build, so a wheel carries them. An editable build skips the copy: there
    rgpo_fast/kernels/__init__.py points the package at kernels/ itself."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = os.path.join(self.build_lib, "rgpo_fast", "kernels")
        self.mkpath(dest)
        for name in sorted(os.listdir(os.path.join(ROOT, "kernels"))):
            if name.endswith(".py"):
                self.copy_file(os.path.join(ROOT, "kernels", name), os.path.join(dest, name))


IS_LINUX_X86 = platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")

# Floors: the oldest versions tested (`make test-floor` runs the suite at exactly these; the
# lent GPU image holds torch 2.11, transformers 5.17 and triton 3.6, so they are floors).
# Exact versions of a fresh install: requirements/lock-cpu.txt and lock-gpu.txt (`make lock`).
install_requires = [
    "torch>=2.11",  # also the GPU check's image; FSDP2 here needs >= 2.8 (rgpo_fast/versions.py)
    "packaging>=23",
    "transformers>=5.17",
    "tokenizers>=0.23.1",  # transformers 5.17's own floor
    "safetensors>=0.8",  # transformers 5.17's own floor
    "numpy>=1.26",
    "pyyaml>=6.0.1",  # trl 1.16's floor
    "tqdm>=4.66.3",  # datasets 4.7's floor
    "math-verify>=0.8",  # 0.7 fails to parse plain decimals (tests/test_rewards.py)
    "matplotlib>=3.8",
    "pillow>=10",  # images: the data readers and the built-in visual task (data/shapes.py)
    "pandas>=2.1.1",
    "pyarrow>=21",
    "datasets>=4.7",
]
if IS_LINUX_X86:
    install_requires.append("triton>=3.6")

extras_require = {
    "test": ["pytest>=8", "pytest-benchmark>=4", "liger-kernel>=0.6", "trl>=1.16", "ruff",
             "tensorboard>=2.15", "wandb>=0.17"],
    # metrics sinks (logging.report_to); optional: a missing one is a clear start-up error
    "tensorboard": ["tensorboard>=2.15"],
    "wandb": ["wandb>=0.17"],
    "bench": ["pytest-benchmark>=4", "liger-kernel>=0.6", "trl>=1.16", "psutil"],
    # vLLM pins its torch exactly: install the tested pair with `make install-gpu`.
    # flash-attn is a separate, optional step (`make install-flash-attn`): it builds from
    # source against the installed torch and needs --no-build-isolation.
    "gpu": ["vllm>=0.33", "liger-kernel>=0.6", "nvidia-ml-py>=12"],
}

ext_modules, cmdclass = _native_extensions()

setup(
    name="rgpo_fast",
    version="0.1.0",
    description="Fused-kernel RL trainer for LLM reasoning: Rationale-Guided Policy Optimization",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    if os.path.exists(os.path.join(ROOT, "README.md"))
    else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",  # tested: 3.11 (the lock, CI), 3.12 (the GPU image)
    packages=[
        "rgpo_fast",
        "rgpo_fast.ops",
        "rgpo_fast.algos",
        "rgpo_fast.data",
        "rgpo_fast.rewards",
        "rgpo_fast.rollout",
        "rgpo_fast.trainer",
        "rgpo_fast.integrations",
        "rgpo_fast.kernels",
    ],
    install_requires=install_requires,
    extras_require=extras_require,
    ext_modules=ext_modules,
    cmdclass={**cmdclass, "build_py": BuildPyWithKernels},
)
