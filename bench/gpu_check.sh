#!/usr/bin/env bash
# The one command for an (offline) machine with a GPU: build objx against the torch there, run the
# test suite on CUDA, compute-sanitizer (memcheck) on a small case, then the benchmarks at LLM
# shapes. Results go to the folder given as $1, or $OBJX_RESULTS, or bench/out/gpu-<date>.
# Budget: well inside 10 minutes on an H100. Every step runs even if an earlier one fails; the
# exit status says whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OBJX_RESULTS:-bench/out/gpu-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME TIMEOUT_S CMD...: run, log to $OUT_DIR/NAME.log, remember failures
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T))"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT_DIR/$name.log"
  echo "== $name: exit $rc"
  [ $rc -eq 0 ] || status=1
}

# Peer packages (liger-kernel, cut-cross-entropy) travel as wheels in .whl/ (see bench/README.md).
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/objx-peers .whl/*.whl \
    && export PYTHONPATH="/tmp/objx-peers${PYTHONPATH:+:$PYTHONPATH}"
fi

{ nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } \
  >"$OUT_DIR/device.txt" 2>&1
cat "$OUT_DIR/device.txt" | tail -n 3

export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-16}"
step build 120 env OBJX_CUDA=ON "$PY" -m pip install --no-build-isolation --no-deps -v .
step info 20 "$PY" -m objx info
# cpu_only tests (demo, integrations, CPU multi-process) touch no CUDA code and run in CI.
step tests 110 "$PY" -m pytest -q -x tests -m "not cpu_only" --junitxml="$OUT_DIR/tests.xml"
step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" bench/sanitizer_case.py
# torch.compile baselines cost ~30 s of compilation per case at these shapes: off here, on with
# OBJX_GPU_COMPILE=1 when the budget allows.
compile_flag=--no-compile
[ "${OBJX_GPU_COMPILE:-0}" = 1 ] && compile_flag=
step bench_logits 80 "$PY" -m objx bench --device cuda --quiet --dtype bfloat16 $compile_flag \
  --shape 8192x128256 --shape 8192x256000 --out "$OUT_DIR/bench_logits_bf16.json"
step bench_linear 80 "$PY" -m objx bench --device cuda --quiet --dtype bfloat16 $compile_flag --objective nll \
  --linear-shape 8192x4096x128256 --linear-shape 8192x2304x256000 --out "$OUT_DIR/bench_linear_bf16.json"
step bench_distill 70 "$PY" -m objx bench --device cuda --quiet --dtype bfloat16 $compile_flag \
  --distill-shape 8192x128256 --linear-distill-shape 8192x2304x256000 --out "$OUT_DIR/bench_distill_bf16.json"
step bench_dpo 60 "$PY" -m objx bench --device cuda --quiet --dtype bfloat16 $compile_flag \
  --divergence-shape 8192x128256 --dpo-shape 8x1024x128256 --out "$OUT_DIR/bench_dpo_bf16.json"
echo "results in $OUT_DIR (exit $status)"
exit $status
