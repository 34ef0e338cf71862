#!/usr/bin/env bash
# Prepares, on a machine WITHOUT a GPU, everything bench/gpu_check.sh needs on the (offline, rarely
# lent) GPU machine, so that its install step takes seconds instead of a CUDA build:
#
#   .gpu/objx-<version>-cp312-*.whl   objx built against the GPU image's torch (2.11.0, CUDA 13),
#                                     OBJX_CUDA=ON for sm_90 (H100/H200)
#   .gpu/peers/*.whl                  Liger-Kernel and Cut Cross-Entropy (pure Python; torch and
#                                     triton are on the image)
#   .gpu/SOURCE.sha256, .gpu/BUILD.txt  what the wheel was built from (gpu_check.sh rebuilds from
#                                     source when csrc/, python/, CMakeLists.txt or pyproject.toml
#                                     changed since)
#
# .gpu/ is git-ignored and must stay within the device tool's 64 MiB carry limit (checked here).
# The build venv (Python 3.12 + torch 2.11.0, a few GB) lives in .gpu-venv/ (ignored, outside
# build/ so `make clean` keeps it) and is reused. First run: ~10-20 min (download + CUDA build on
# 2 cores); later runs: incremental (its CMake build folder, build/gpu-prebuild, is kept).
#
# usage: bash bench/gpu_prebuild.sh [--no-peers] [--refresh-peers]
# env:   OBJX_GPU_PYTHON (a python3.12), OBJX_GPU_VENV (.gpu-venv), OBJX_GPU_TORCH (torch==2.11.0),
#        OBJX_CUDA_ARCHS (90), OBJX_GPU_BUILD_DIR (build/gpu-prebuild), CMAKE_BUILD_PARALLEL_LEVEL (2)
set -euo pipefail
cd "$(dirname "$0")/.."

GPU_DIR=.gpu
VENV="${OBJX_GPU_VENV:-.gpu-venv}"
TORCH_SPEC="${OBJX_GPU_TORCH:-torch==2.11.0}"
ARCHS="${OBJX_CUDA_ARCHS:-90}"
# A CMake build folder of its own: `make build` (another torch) would otherwise share
# build/{wheel_tag} with this build and reconfigure it each time (and race it when both run).
BUILD_DIR="${OBJX_GPU_BUILD_DIR:-build/gpu-prebuild}"
LIMIT_BYTES=$((64 * 1024 * 1024))
peers=1 refresh_peers=0
for a in "$@"; do
  case "$a" in
    --no-peers) peers=0 ;;
    --refresh-peers) refresh_peers=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_prebuild: unknown option $a" >&2; exit 2 ;;
  esac
done

t_start=$(date +%s)
elapsed() { echo $(( $(date +%s) - t_start )); }
say() { echo "[gpu_prebuild +$(elapsed)s] $*"; }

# --- a Python 3.12 (the GPU image's); not needed once the venv exists ---
is_py312() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; }
py312=""
for c in "${OBJX_GPU_PYTHON:-}" "$VENV/bin/python" "$(command -v python3.12 2>/dev/null)" \
    "$(pyenv root 2>/dev/null)/versions/3.12.1/bin/python3.12" \
    $(ls -1d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null); do
  if is_py312 "$c"; then py312=$c; break; fi
done
if [ -z "$py312" ]; then
  echo "gpu_prebuild: need a Python 3.12 (the GPU image's); set OBJX_GPU_PYTHON" >&2
  exit 1
fi

# --- the build venv: torch as on the GPU image, and the build tools ---
want_torch="${TORCH_SPEC#torch==}"
have_torch=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ "${have_torch%%+*}" != "$want_torch" ]; then
  say "creating $VENV with $py312 and $TORCH_SPEC (have: '${have_torch:-none}'; a few GB)"
  [ -x "$VENV/bin/python" ] || "$py312" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
fi
# Build tools (pybind11: pyproject's build requirement) and objx's own run-time dependencies
# (numpy, tqdm), plus pytest/hypothesis so the wheel can be smoke-tested here on CPU.
if ! "$VENV/bin/python" -c 'import scikit_build_core, pybind11, ninja, cmake, numpy, tqdm, pytest, hypothesis' 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.24" ninja numpy tqdm pytest hypothesis
fi
torch_version=$("$VENV/bin/python" -c 'import torch; print(torch.__version__, torch.version.cuda)')
say "venv ready: torch $torch_version"

# --- objx's wheel ---
hash_before=$(bash bench/gpu_check.sh --source-hash)
mkdir -p "$GPU_DIR"
stage=$(mktemp -d "${TMPDIR:-/tmp}/objx-gpu-wheel.XXXXXX")
trap 'rm -rf "$stage"' EXIT
say "building objx (OBJX_CUDA=ON, archs $ARCHS, CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}); log: $GPU_DIR/build.log"
t_build=$(date +%s)
if ! env OBJX_CUDA=ON OBJX_CUDA_ARCHS="$ARCHS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    PATH="$(pwd)/$VENV/bin:$PATH" nice -n 19 "$VENV/bin/python" -m pip wheel --no-build-isolation --no-deps -v \
    -C build-dir="$BUILD_DIR" -w "$stage" . >"$stage/build.log" 2>&1; then
  cp "$stage/build.log" "$GPU_DIR/build.log"
  echo "gpu_prebuild: the wheel build failed (last lines of $GPU_DIR/build.log):" >&2
  tail -n 40 "$GPU_DIR/build.log" >&2
  exit 1
fi
cp "$stage/build.log" "$GPU_DIR/build.log"
build_s=$(( $(date +%s) - t_build ))
wheel=$(ls -1 "$stage"/objx-*.whl | head -n 1)
say "built $(basename "$wheel") in ${build_s}s"

# Smoke test before the wheel goes into $GPU_DIR: it imports against torch 2.11 (undefined symbols,
# a wrong ABI or a broken package show here, not on the GPU) and reports its CUDA kernels.
site="$stage/site"
vpy="$(cd "$VENV" && pwd)/bin/python"
"$vpy" -m pip install -q --no-deps --no-index --no-compile --target "$site" "$wheel"
if ! info=$(cd "$stage" && PYTHONPATH="$site" "$vpy" -c \
    'import json, objx; i = objx.build_info(); print(json.dumps(i)); assert i["cuda_compiled"], "no CUDA kernels"'); then
  echo "gpu_prebuild: the wheel does not import (above); $GPU_DIR/ left as it was" >&2
  exit 1
fi
say "wheel imports: $info"
hash_after=$(bash bench/gpu_check.sh --source-hash)
if [ "$hash_before" != "$hash_after" ]; then
  echo "gpu_prebuild: the sources changed during the build; $GPU_DIR/ left as it was: run it again" >&2
  exit 1
fi
rm -f "$GPU_DIR"/objx-*.whl
mv "$wheel" "$GPU_DIR/"
wheel="$GPU_DIR/$(basename "$wheel")"
echo "$hash_before" >"$GPU_DIR/SOURCE.sha256"

# --- peers ---
if [ $peers = 1 ]; then
  mkdir -p "$GPU_DIR/peers"
  if [ $refresh_peers = 1 ] || ! compgen -G "$GPU_DIR/peers/liger_kernel-*.whl" >/dev/null \
      || ! compgen -G "$GPU_DIR/peers/cut_cross_entropy-*.whl" >/dev/null; then
    [ $refresh_peers = 1 ] && rm -f "$GPU_DIR"/peers/*.whl
    if ! "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d "$GPU_DIR/peers" liger-kernel cut-cross-entropy; then
      echo "gpu_prebuild: WARNING: could not download the peer wheels; the GPU benches will run without Liger/CCE" >&2
    fi
  fi
fi

{
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- csrc python CMakeLists.txt pyproject.toml 2>/dev/null || echo ' + uncommitted changes')"
  echo "source sha256: $hash_before"
  echo "python: $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')"
  echo "torch: $torch_version"
  echo "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo '?')"
  echo "archs: $ARCHS"
  echo "build_info: $info"
  echo "wheel build: ${build_s}s"
} >"$GPU_DIR/BUILD.txt"

# --- sizes: everything in .gpu/ travels as one carried folder (64 MiB at most) ---
rm -f "$GPU_DIR/build.log.gz"
gzip -f "$GPU_DIR/build.log"  # keep it, small
echo "sizes:"
(cd "$GPU_DIR" && find . -type f -printf '%s\t%p\n' | sort -k2 | awk -F'\t' '{printf "  %8.2f MiB  %s\n", $1/1048576, $2}')
total=$(find "$GPU_DIR" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
printf '  %8.2f MiB  total (limit 64 MiB)\n' "$(awk -v b="$total" 'BEGIN {print b/1048576}')"
if [ "$total" -gt "$LIMIT_BYTES" ]; then
  echo "gpu_prebuild: $GPU_DIR is over the 64 MiB carry limit" >&2
  exit 1
fi
say "done; carry [\"$GPU_DIR\"] and run: bash bench/gpu_check.sh \$OUT"
