"""Build-time helper of setup.py: the native extensions of rgpo_fast (csrc/).

- rgpo_fast._C (CppExtension): op schemas + CPU kernels. Built by default.
- rgpo_fast._C_cuda (CUDAExtension): CUDA kernels + their binding. Built only when the
  installed torch is a CUDA build and nvcc and its headers are found (CUDA_HOME), and _C is
  built too (the CUDA module only adds implementations to the schemas that _C defines).
  `make install` skips it on a machine without a GPU.

Environment switches (value "1"):
  RGPO_FAST_SKIP_CPP_BUILD   skip both extensions (the package runs on the PyTorch path)
  RGPO_FAST_SKIP_CUDA_BUILD  skip the CUDA extension only
  RGPO_FAST_CUDA_ARCH_LIST   forwarded as TORCH_CUDA_ARCH_LIST (default DEFAULT_CUDA_ARCHS:
                             sm_80 and sm_90 machine code, plus compute_90 PTX that the
                             driver JIT-compiles on newer GPUs, e.g. Blackwell)

torch is imported only inside `native_extensions`, so importing this file (and setup.py)
never needs torch.
"""

from __future__ import annotations

import glob
import os
import sys

DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def gencode_flags(arch_list: str = DEFAULT_CUDA_ARCHS) -> list[str]:
    """nvcc -gencode flags of a TORCH_CUDA_ARCH_LIST string, as torch's build expands it
    ("9.0+PTX" = sm_90 machine code and compute_90 PTX); tests compile with these."""
    flags = []
    for arch in arch_list.replace(" ", ";").split(";"):
        if not arch:
            continue
        num = arch.removesuffix("+PTX").replace(".", "")
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
        if arch.endswith("+PTX"):
            flags += ["-gencode", f"arch=compute_{num},code=compute_{num}"]
    return flags


def _notice(msg: str) -> None:
    print(f"rgpo_fast setup: {msg}", file=sys.stderr)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() == "1"


def native_extensions(root: str):
    """(ext_modules, cmdclass) for setup(); ([], {}) when skipped or torch is missing."""
    if _flag("RGPO_FAST_SKIP_CPP_BUILD"):
        _notice("RGPO_FAST_SKIP_CPP_BUILD=1: no native extension; PyTorch path only")
        return [], {}
    try:
        import torch  # noqa: PLC0415 (build-time only)
        from torch.utils.cpp_extension import (  # noqa: PLC0415
            CUDA_HOME,
            BuildExtension,
            CppExtension,
            CUDAExtension,
        )
    except ImportError as exc:
        _notice(f"torch is not importable ({exc}); building without native extensions")
        return [], {}

    def rel(paths):  # setuptools wants sources relative to setup.py
        return sorted(os.path.relpath(p, root) for p in paths)

    csrc = os.path.join(root, "csrc")
    cxx_flags = [
        "-O3",
        # `#pragma omp simd` loops vectorise without linking a second OpenMP runtime;
        # threads come from ATen's parallel_for (torch's own OpenMP).
        "-fopenmp-simd",
        "-fno-math-errno",
    ]
    exts = [
        CppExtension(
            "rgpo_fast._C",
            sources=rel([os.path.join(csrc, "bindings.cpp"), *glob.glob(f"{csrc}/cpu/*.cpp")]),
            include_dirs=[csrc],
            extra_compile_args={"cxx": cxx_flags},
        )
    ]

    want_cuda = not _flag("RGPO_FAST_SKIP_CUDA_BUILD")
    if want_cuda and torch.version.cuda is None:
        _notice("torch is a CPU build: skipping the CUDA extension")
        want_cuda = False
    elif want_cuda and CUDA_HOME is None:
        _notice("nvcc not found (CUDA_HOME unset): skipping the CUDA extension")
        want_cuda = False
    elif want_cuda and not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime_api.h")):
        # torch guesses CUDA_HOME from nvcc's path; an nvcc linked into /usr/local/bin gives
        # /usr/local, which has no CUDA headers. Fail here with a notice, not in the compiler.
        _notice(f"no CUDA headers under CUDA_HOME={CUDA_HOME} (set CUDA_HOME to the toolkit): "
                "skipping the CUDA extension")
        want_cuda = False
    if want_cuda:
        os.environ.setdefault(
            "TORCH_CUDA_ARCH_LIST", os.environ.get("RGPO_FAST_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        )
        exts.append(
            CUDAExtension(
                "rgpo_fast._C_cuda",
                sources=rel(
                    [
                        os.path.join(csrc, "cuda", "bindings_cuda.cpp"),
                        *glob.glob(f"{csrc}/cuda/*.cu"),
                    ]
                ),
                include_dirs=[csrc],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
            )
        )
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=True)}
