# Set-up and the everyday commands. Every target is idempotent: `make test` on a fresh
# clone creates .venv, installs torch (the CPU 2.13.0 wheel on machines without a GPU),
# builds the package editable and runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check
STAMP  := $(VENV)/.rgpo_fast-installed
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# A GPU machine gets the CUDA build of torch; CPU machines the 2.13.0 CPU wheel from local disk.
TORCH_SPEC := $(if $(HAS_GPU),torch>=2.6,torch==2.13.0)
NATIVE_SRC := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh _build_native.py)
PYTEST_ARGS ?=

.PHONY: install test train bench bench-gpu lint clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile $(NATIVE_SRC)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing $(TORCH_SPEC) and rgpo_fast[test] into $(VENV) (log: $(VENV)/pip.log)"
	$(PIP) install setuptools wheel "$(TORCH_SPEC)" > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(PIP) install --no-build-isolation -e ".[test]" >> $(VENV)/pip.log 2>&1 \
		|| (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import rgpo_fast"
	touch $(STAMP)

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
