# Two commands on a fresh machine: `make test` and `make bench`. Both create .venv when missing,
# install torch and the build tools, build objx from this tree, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CUDA build of torch, so that nvcc (when present) can compile the CUDA kernels against it.
TORCH_SPEC ?= torch==2.14.1
DEPS_STAMP := $(VENV)/.objx-deps
BENCH_OUT ?= bench/out/bench-$(shell date +%Y%m%d-%H%M%S).json

.PHONY: build test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): $(BIN)/python Makefile
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.24" ninja numpy tqdm matplotlib transformers accelerate trl datasets pytest hypothesis
	touch $@

# Incremental: scikit-build-core keeps its CMake build folder under build/.
build: $(DEPS_STAMP)
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps .

test: build
	$(BIN)/python -m pytest -q

bench: build
	mkdir -p $(dir $(BENCH_OUT))
	$(BIN)/python -m objx bench --out $(BENCH_OUT)

clean:
	rm -rf build dist *.egg-info
