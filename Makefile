# Two commands on a fresh machine: `make test` and `make bench`. Both create .venv when missing,
# install torch and the build tools, build objx from this tree, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CUDA build of torch, so that nvcc (when present) can compile the CUDA kernels against it.
TORCH_SPEC ?= torch==2.14.1
DEPS_STAMP := $(VENV)/.objx-deps
BENCH_OUT ?= bench/out/bench-$(shell date +%Y%m%d-%H%M%S).json

# The simulation build (OBJX_CUDA_SIM): the CUDA kernel sources compiled by the host compiler
# against csrc/sim, in its own build folder and install target, shadowing the normal install only
# for the tests it runs. SANITIZE=address adds AddressSanitizer (CI runs SIM_TESTS_ASAN then).
SANITIZE ?=
SIM_DIR ?= build/cuda-sim$(if $(SANITIZE),-$(SANITIZE))
SIM_SITE := $(SIM_DIR)/site
SIM_REPORT := $(SIM_DIR)/launches.json
SIM_TESTS ?= tests
# OMP_WAIT_POLICY=PASSIVE: torch's OpenMP workers otherwise spin after every op, taking the cores the
# simulated blocks run on.
SIM_ENV := PYTHONPATH=$(abspath $(SIM_SITE)) OBJX_CUDA_SIM_REPORT=$(abspath $(SIM_REPORT)) OMP_WAIT_POLICY=PASSIVE
ifeq ($(SANITIZE),address)
# libstdc++ is preloaded too: python does not link it, and ASan must see its __cxa_throw at start-up.
SIM_ENV += LD_PRELOAD="$(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libstdc++.so)" \
  ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0
# An ASan report ends the process: pytest must not hold fd 2 in its capture file, or it is lost.
SIM_PYTEST_FLAGS := --capture=sys
endif

.PHONY: build test bench clean build-cuda-sim test-cuda-sim

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): $(BIN)/python Makefile
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" "scikit-build-core>=0.11" "cmake>=3.24" ninja numpy tqdm matplotlib transformers accelerate trl datasets pytest hypothesis
	touch $@

# Incremental: scikit-build-core keeps its CMake build folder under build/.
build: $(DEPS_STAMP)
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps .

test: build
	$(BIN)/python -m pytest -q

build-cuda-sim: $(DEPS_STAMP)
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps --upgrade --target $(SIM_SITE) \
	  -C build-dir=$(SIM_DIR)/build -C cmake.define.OBJX_CUDA_SIM=ON -C cmake.define.OBJX_SANITIZE=$(SANITIZE) .

# The suite against the CUDA kernels; after the whole suite, tests/sim/test_launches.py checks that
# every kernel of csrc was launched for every dtype it is instantiated for.
test-cuda-sim: build-cuda-sim
	rm -f $(SIM_REPORT)
	$(SIM_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider $(SIM_PYTEST_FLAGS) $(SIM_TESTS)
ifeq ($(SIM_TESTS),tests)
	$(SIM_ENV) OBJX_SIM_CHECK_LAUNCHES=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/sim/test_launches.py
endif

bench: build
	mkdir -p $(dir $(BENCH_OUT))
	$(BIN)/python -m objx bench --out $(BENCH_OUT)

clean:
	rm -rf build dist *.egg-info
