# Set-up and the everyday commands. Every target is idempotent: `make test` on a fresh
# clone creates .venv, installs torch (the CPU 2.13.0 wheel on machines without a GPU, the
# tested CUDA torch on a GPU machine), builds the package editable and runs the suite.
# GPU users: `make install-gpu` (torch + vLLM, the tested pair), optionally
# `make install-flash-attn`, then `make gpu-check`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check
STAMP  := $(VENV)/.rgpo_fast-installed
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# The GPU stack that was written against (rgpo_fast/versions.py: TESTED): vLLM pins torch
# exactly, so torch is pinned too (a bare `torch` takes a newer one that vLLM rejects).
GPU_TORCH := torch==2.14.0
GPU_VLLM  := vllm==0.33.0
# A GPU machine gets the CUDA build of torch; CPU machines the 2.13.0 CPU wheel from local disk.
TORCH_SPEC := $(if $(HAS_GPU),$(GPU_TORCH),torch==2.13.0)
NATIVE_SRC := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh _build_native.py)
PYTEST_ARGS ?=

.PHONY: install install-gpu install-flash-attn gpu-check test train bench bench-gpu lint clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile $(NATIVE_SRC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing $(TORCH_SPEC) and rgpo_fast[test] into $(VENV) (log: $(VENV)/pip.log)"
	$(PIP) install setuptools wheel "$(TORCH_SPEC)" > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(PIP) install --no-build-isolation -e ".[test]" >> $(VENV)/pip.log 2>&1 \
		|| (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import rgpo_fast"
	touch $(STAMP)

# vLLM needs Python >= 3.11. The native extensions are rebuilt against this torch.
install-gpu:
	@$(PYTHON) -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		'error: vllm 0.33 needs Python >= 3.11, this is ' + sys.version.split()[0])"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install setuptools wheel ninja "$(GPU_TORCH)"
	$(PIP) install "$(GPU_VLLM)" "$(GPU_TORCH)"
	$(PIP) install --no-build-isolation -e ".[test,gpu]" "$(GPU_TORCH)"
	$(BIN)/python -c "from rgpo_fast.versions import check_gpu_stack; check_gpu_stack()"
	touch $(STAMP)

# Optional: flash-attn's varlen kernels for the packed policy forward. It ships only an
# sdist; its setup.py imports torch, packaging, psutil and ninja (no build isolation).
install-flash-attn: install-gpu
	$(PIP) install packaging psutil ninja
	MAX_JOBS=$${MAX_JOBS:-8} $(PIP) install --no-build-isolation "flash-attn>=2.7"

# One script that checks the GPU path (README: "Checking the GPU path").
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

train: install
	$(BIN)/python -m rgpo_fast.train

bench: install
	$(BIN)/python benchmarks/bench_linear_logprob.py

bench-gpu: install
	$(BIN)/python benchmarks/bench_linear_logprob.py --gpu --dtype bfloat16

lint: install
	$(BIN)/ruff check rgpo_fast kernels benchmarks tests

clean:
	rm -rf build *.egg-info rgpo_fast/*.so
