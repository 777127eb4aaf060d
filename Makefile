# Set-up and the everyday commands. Every target is idempotent: `make test` on a fresh
# clone creates .venv, installs the locked versions (torch 2.13.0 on machines without a GPU,
# the tested CUDA torch on a GPU machine), builds the package editable and runs the suite.
# GPU users: `make install-gpu` (torch + vLLM, the tested pair), optionally
# `make install-flash-attn`, then `make gpu-check`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check
STAMP  := $(VENV)/.rgpo_fast-installed
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# What a fresh clone installs is locked: every distribution, transitive ones included, at the
# exact version of a committed lock (requirements/lock.py; `make lock` regenerates both
# files from setup.py's ranges). The CPU lock serves machines without a GPU, the GPU lock
# `make install-gpu` and `make install` on a GPU machine.
CPU_LOCK := requirements/lock-cpu.txt
GPU_LOCK := requirements/lock-gpu.txt
LOCK     := $(if $(HAS_GPU),$(GPU_LOCK),$(CPU_LOCK))
# torch is chosen here, not resolved: its build is a choice. The CPU lock takes 2.13.0; the
# GPU stack the pair that vLLM was built for (rgpo_fast/versions.py: TESTED; vLLM pins torch
# exactly, so a bare `torch` takes a newer one that vLLM rejects).
CPU_TORCH := torch==2.13.0
GPU_TORCH := torch==2.14.0
GPU_VLLM  := vllm==0.33.0
# On Linux the package index serves torch as a CUDA build (about 3 GB with its nvidia-*
# wheels, which the locks pin too). For the CPU-only build of the same release, name
# PyTorch's CPU index: `make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX_URL ?=
INDEX_ARGS := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
# The CUDA extension is built where a GPU can run it: a CUDA build of torch on a machine
# without one (Linux's default, see above) would otherwise compile it for minutes, unused.
NATIVE_ENV := $(if $(HAS_GPU),,RGPO_FAST_SKIP_CUDA_BUILD=1)
NATIVE_SRC := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh _build_native.py)
PYTEST_ARGS ?=

.PHONY: install install-gpu install-flash-attn gpu-check gpu-check-offline test train train-vl bench \
	bench-gpu lint clean \
	lock test-latest test-floor

install: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile $(LOCK) requirements/lock.py $(NATIVE_SRC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing rgpo_fast[test] into $(VENV) at the versions of $(LOCK) (log: $(VENV)/pip.log)"
	$(PIP) install -c $(LOCK) $(INDEX_ARGS) setuptools wheel torch > $(VENV)/pip.log 2>&1 \
		|| (cat $(VENV)/pip.log; exit 1)
	$(NATIVE_ENV) $(PIP) install -c $(LOCK) $(INDEX_ARGS) --no-build-isolation -e ".[test]" \
		>> $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python requirements/lock.py check $(LOCK)
	$(BIN)/python -c "import rgpo_fast"
	echo $(LOCK) > $(STAMP)

# vLLM needs Python >= 3.11. The native extensions are rebuilt against this torch.
install-gpu:
	@$(PYTHON) -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		'error: vllm 0.33 needs Python >= 3.11, this is ' + sys.version.split()[0])"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c $(GPU_LOCK) setuptools wheel ninja torch
	$(PIP) install -c $(GPU_LOCK) vllm torch
	$(PIP) install -c $(GPU_LOCK) --no-build-isolation -e ".[test,gpu]"
	$(BIN)/python requirements/lock.py check $(GPU_LOCK)
	$(BIN)/python -c "from rgpo_fast.versions import check_gpu_stack; check_gpu_stack()"
	echo $(GPU_LOCK) > $(STAMP)

# Regenerate both locks from setup.py's ranges (newest versions the ranges allow), then run
# `make test` on the new CPU lock before committing it. Resolved by pip without installing.
LOCK_RESOLVE := RGPO_FAST_SKIP_CPP_BUILD=1 $(PYTHON) requirements/lock.py
lock:
	$(LOCK_RESOLVE) compile $(CPU_LOCK) -- setuptools wheel $(CPU_TORCH) ".[test]"
	$(LOCK_RESOLVE) compile $(GPU_LOCK) -- setuptools wheel ninja packaging psutil \
		$(GPU_TORCH) $(GPU_VLLM) ".[test,gpu]"

# Canaries, not part of CI: the suite in a throw-away copy of the tree (build/test-*, so the
# in-place C++ build of .venv is untouched) with its own venv.
#   make test-latest: the newest releases setup.py's ranges allow (torch: LATEST_TORCH,
#                     the lock's by default; `LATEST_TORCH=torch` takes the newest).
#   make test-floor:  every `>=` floor of setup.py exactly (torch 2.11 included).
LATEST_TORCH ?= $(CPU_TORCH)
COPY_TREE = rm -rf $(1) && mkdir -p $(1) && tar --exclude=./.git --exclude='./.venv*' \
	--exclude=./build --exclude='*.so' --exclude='*.egg-info' --exclude=__pycache__ -cf - . \
	| tar -xf - -C $(1) && $(PYTHON) -m venv $(1)/.venv
test-latest:
	$(call COPY_TREE,build/test-latest)
	cd build/test-latest && .venv/bin/pip install -q $(INDEX_ARGS) setuptools wheel "$(LATEST_TORCH)" \
		&& $(NATIVE_ENV) .venv/bin/pip install -q $(INDEX_ARGS) --no-build-isolation -e ".[test]" \
		&& .venv/bin/pip list 2>/dev/null | grep -i -E "^(torch|transformers|triton|trl|kernels) " \
		&& .venv/bin/python -m pytest -q $(PYTEST_ARGS)
test-floor:
	$(call COPY_TREE,build/test-floor)
	cd build/test-floor && RGPO_FAST_SKIP_CPP_BUILD=1 $(PYTHON) requirements/lock.py floors \
		floors.txt -- ".[test]" && cat floors.txt \
		&& .venv/bin/pip install -q -c floors.txt $(INDEX_ARGS) setuptools wheel torch \
		&& $(NATIVE_ENV) .venv/bin/pip install -q -c floors.txt $(INDEX_ARGS) --no-build-isolation \
		-e ".[test]" \
		&& .venv/bin/python -m pytest -q $(PYTEST_ARGS)

# Optional: flash-attn's varlen kernels for the packed policy forward. It ships only an
# sdist; its setup.py imports torch, packaging, psutil and ninja (no build isolation).
install-flash-attn: install-gpu
	$(PIP) install packaging psutil ninja
	MAX_JOBS=$${MAX_JOBS:-8} $(PIP) install --no-build-isolation "flash-attn>=2.7"

# One script that checks the GPU path (README: "Checking the GPU path").
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py

# The same on a GPU machine without network: the interpreter that already holds torch
# ($(PYTHON)), no venv, no pip; the extensions are built in place for the local GPU.
gpu-check-offline:
	$(PYTHON) benchmarks/gpu_check.py --offline

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

train: install
	$(BIN)/python -m rgpo_fast.train

# The built-in vision-language run (tiny Qwen2-VL on the `shapes` task, about 4.5 minutes).
train-vl: install
	$(BIN)/python -m rgpo_fast.train --config configs/tiny_vl_cpu.yaml

bench: install
	$(BIN)/python benchmarks/bench_policy_loss.py

bench-gpu: install
	$(BIN)/python benchmarks/bench_linear_logprob_gpu.py --dtype bfloat16

lint: install
	$(BIN)/ruff check rgpo_fast kernels benchmarks tests requirements

clean:
	rm -rf build *.egg-info rgpo_fast/*.so
