#!/usr/bin/env bash
# The one command for the (offline, rarely lent) GPU machine: install objx, run the test suite on
# CUDA, compute-sanitizer memcheck, host-device sync counts, an ncu kernel summary, then the
# benchmarks at LLM shapes; bench/gpu_summary.py writes OUT_DIR/summary.{json,md} at the end.
#
#   bash bench/gpu_prebuild.sh            # first, on a machine with PyPI: fills .gpu/ (see there)
#   bash bench/gpu_check.sh OUT_DIR       # on the GPU machine (device tool: carry [".gpu"], $OUT)
#   bash bench/gpu_check.sh --dry-run [OUT_DIR]   # every step on the CPU, tiny shapes (< 2 min; CI)
#
# OUT_DIR defaults to $OBJX_RESULTS, else bench/out/gpu-<date> (bench/out/dry-<date> for a dry run).
# Every step runs even if an earlier one failed; the exit status is gpu_summary.py's (non-zero when a
# step failed or timed out).
#
# Time limits (seconds) of the steps on an H200; the whole command stays under 6 minutes: the
# limits add up to 355 s, and OBJX_GPU_BUDGET=340 (for all steps but the summary) cuts short or
# skips any step that would run past it, so the last benches go first when time is short.
#
#   step            limit  what
#   install            30  pip install --no-index .gpu/objx-*.whl (240 when built from source:
#                          no wheel, or one stale against csrc/ python/ CMakeLists.txt pyproject.toml)
#   info               15  nvidia-smi, torch, objx.build_info(); fails unless CUDA kernels for this GPU
#   tests             110  OBJX_TEST_DEVICES=cuda pytest -m "not cpu_only": three groups of files
#                          (sft, distill, the rest) in parallel, each under its own 110 s timeout
#   memcheck           50  compute-sanitizer --tool memcheck on bench/gpu_cases.py memcheck
#   syncs              20  bench/gpu_cases.py syncs: syncs per op under set_sync_debug_mode("warn")
#   ncu                35  ncu --nvtx --print-summary per-kernel on bench/gpu_cases.py profile
#   bench_logits       25  objx bench, bf16: logits 8192x128256 and 8192x256000 (+ Liger)
#   bench_linear       25  fused head 8192x4096x128256 and 8192x2304x256000, nll (+ Liger, CCE)
#   bench_distill      20  distill 8192x128256, fused 8192x2304x256000
#   bench_dpo          15  divergences 8192x128256, DPOKernelLoss step 8x1024x128256
#   summary            10  bench/gpu_summary.py
#
# A step killed at its limit still leaves what it wrote: pytest gets SIGINT first (it then writes
# its junit XML), and logs its per-test outcomes as it goes (-v); SIGKILL follows 10 s later.
# torch.compile baselines are off in the benches (~30 s of compilation per case): OBJX_GPU_COMPILE=1.
set -uo pipefail
cd "$(dirname "$0")/.."

# The sources the prebuilt wheel was made from (bench/gpu_prebuild.sh stamps .gpu/SOURCE.sha256).
source_hash() {
  find CMakeLists.txt pyproject.toml csrc python -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.so' ! -path '*.egg-info/*' 2>/dev/null \
    | LC_ALL=C sort | while IFS= read -r f; do printf '%s\n' "$f"; cat "$f"; done | sha256sum | cut -d' ' -f1
}
if [ "${1:-}" = "--source-hash" ]; then
  source_hash
  exit 0
fi

DRY=0
if [ "${1:-}" = "--dry-run" ]; then
  DRY=1
  shift
fi
kind=gpu
[ $DRY = 1 ] && kind=dry
OUT_DIR="${1:-${OBJX_RESULTS:-bench/out/$kind-$(date +%Y%m%d-%H%M%S)}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
if [ -z "${PYTHON:-}" ] && [ $DRY = 1 ] && [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY="${PYTHON:-python3}"
fi
export PYTHONUNBUFFERED=1
BUDGET="${OBJX_GPU_BUDGET:-340}"
[ $DRY = 1 ] && BUDGET="${OBJX_GPU_BUDGET:-115}"
T0=$(date +%s)
STEPS="$OUT_DIR/steps.tsv"
printf 'step\tstatus\tseconds\texit\tlimit\tnote\n' >"$STEPS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/objx-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
{
  echo "mode: $([ $DRY = 1 ] && echo dry-run || echo gpu)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "python: $PY"
  echo "budget_s: $BUDGET"
  [ -f .gpu/BUILD.txt ] && sed 's/^/wheel /' .gpu/BUILD.txt
} >"$OUT_DIR/run.txt"

record() {  # record NAME STATUS SECONDS EXIT LIMIT NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6//$'\t'/ }" >>"$STEPS"
  echo "== $1: $2 (${3}s${6:+; $6})"
}
skip() {  # skip NAME REASON
  record "$1" skipped 0 - - "$2"
}
clamp() {  # clamp LIMIT: the limit, cut to what is left of the overall budget (0: nothing left)
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt 5 ]; then echo 0; elif [ "$1" -gt "$left" ]; then echo "$left"; else echo "$1"; fi
}
status_of() {  # status_of EXIT
  case "$1" in 0) echo pass ;; 124|137) echo timeout ;; *) echo fail ;; esac
}
# step NAME LIMIT CMD...: run with a time limit, log to $OUT_DIR/NAME.log, record the outcome.
step() {
  local name=$1 limit note="" t rc; limit=$(clamp "$2"); shift 2
  if [ "$limit" = 0 ]; then skip "$name" "overall budget (${BUDGET}s) spent"; return; fi
  [ -n "${STEP_NOTE:-}" ] && note="$STEP_NOTE"
  echo "== $name (limit ${limit}s, $(date +%T))"
  t=$(date +%s)
  timeout -s INT -k 10 "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  rc=$?
  [ $rc = 0 ] || tail -n 15 "$OUT_DIR/$name.log" | sed 's/^/   | /'
  record "$name" "$(status_of $rc)" $(( $(date +%s) - t )) "$rc" "$limit" "$note"
}

# --- install ---------------------------------------------------------------------------------
SITE="$WORK/site" PEERS="$WORK/peers"
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")' 2>/dev/null || echo none)
# The wheel in .gpu/ that this Python can install: its own cpXY tag, or an abi3 one for cpXY or older.
wheel=$("$PY" -c '
import sys
for path in sys.argv[1:]:
    parts = path.rsplit("/", 1)[-1][:-len(".whl")].split("-")
    if len(parts) < 5 or not parts[-3].startswith("cp"):
        continue
    py, abi, me = parts[-3], parts[-2], (sys.version_info[0], sys.version_info[1])
    if abi == f"cp{me[0]}{me[1]}" or (abi == "abi3" and (int(py[2]), int(py[3:] or 0)) <= me):
        print(path)
        break
' .gpu/objx-*.whl 2>/dev/null)
any_wheel=$(ls -1 .gpu/objx-*.whl 2>/dev/null | head -n 1 || true)
install_wheel() {  # install_wheel WHEEL TARGET: pip without an index, or plain unzip where pip is missing
  rm -rf "$2"
  "$PY" -m pip install -q --no-deps --no-index --no-compile --target "$2" "$1" \
    || "$PY" -m zipfile -e "$1" "$2"
}
build_and_install() {
  rm -rf "$WORK/wheel" && mkdir -p "$WORK/wheel"
  env OBJX_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-16}" \
    "$PY" -m pip wheel --no-build-isolation --no-deps -v -w "$WORK/wheel" . \
    && install_wheel "$(ls -1 "$WORK"/wheel/objx-*.whl | head -n 1)" "$SITE"
}
export -f install_wheel build_and_install
export PY WORK SITE
installed=0
# The wheel only runs with the torch release it was built against (torch's C++ ABI).
wheel_torch=$(sed -n 's/^torch: \([^ +]*\).*/\1/p' .gpu/BUILD.txt 2>/dev/null | head -n 1)
run_torch=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo none)
if [ -n "$wheel" ] && [ -n "$wheel_torch" ] && [ "$wheel_torch" != "$run_torch" ]; then
  any_wheel="$wheel (built for torch $wheel_torch, not $run_torch)"
  wheel=""
fi
if [ -n "$wheel" ]; then
  stamp=$(cat .gpu/SOURCE.sha256 2>/dev/null || echo none)
  if [ "$stamp" = "$(source_hash)" ] || [ "${OBJX_GPU_STALE_WHEEL:-}" = use ]; then
    STEP_NOTE="prebuilt $(basename "$wheel")" step install 30 bash -c 'install_wheel "$0" "$SITE"' "$wheel"
  elif [ $DRY = 1 ]; then
    STEP_NOTE="prebuilt $(basename "$wheel"), stale against the tree (dry run installs it anyway)" \
      step install 30 bash -c 'install_wheel "$0" "$SITE"' "$wheel"
  else  # build from source; should that fail, the stale wheel still lets the other steps run
    STEP_NOTE="$(basename "$wheel") is stale (csrc/ python/ CMakeLists.txt or pyproject.toml changed since gpu_prebuild.sh): built from source, else the stale wheel" \
      step install 240 bash -c 'build_and_install || { echo "source build failed: installing the stale $0"; install_wheel "$0" "$SITE"; exit 1; }' "$wheel"
  fi
  installed=1
elif [ $DRY = 1 ]; then
  skip install "dry run: ${any_wheel:+$(basename "$any_wheel") does not fit $py_tag/torch $run_torch; }using the objx installed for $PY"
else
  STEP_NOTE="no .gpu/objx-*.whl for $py_tag/torch $run_torch${any_wheel:+ ($(basename "$any_wheel") is not)}: built from source" \
    step install 240 bash -c build_and_install
  installed=1
fi
[ $installed = 1 ] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# Peer packages (liger-kernel, cut-cross-entropy) travel as wheels in .gpu/peers/.
if compgen -G ".gpu/peers/*.whl" >/dev/null; then
  mkdir -p "$PEERS"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$PEERS" .gpu/peers/*.whl >"$OUT_DIR/peers.log" 2>&1 \
      || { for w in .gpu/peers/*.whl; do "$PY" -m zipfile -e "$w" "$PEERS" || exit 1; done; } >>"$OUT_DIR/peers.log" 2>&1; then
    export PYTHONPATH="$PEERS${PYTHONPATH:+:$PYTHONPATH}"
    echo "peers: $(cd .gpu/peers && ls -1 *.whl | tr '\n' ' ')" | tee -a "$OUT_DIR/run.txt"
  else
    echo "peers: install failed (see peers.log)" | tee -a "$OUT_DIR/run.txt"
  fi
fi

# --- info ------------------------------------------------------------------------------------
DEV=cuda
[ $DRY = 1 ] && DEV=cpu
{ timeout 10 nvidia-smi 2>&1 || echo "(no nvidia-smi)"; timeout 10 compute-sanitizer --version 2>&1 | tail -n 1
  timeout 10 ncu --version 2>&1 | tail -n 1; } >"$OUT_DIR/device.txt" 2>&1
step info 15 "$PY" bench/gpu_cases.py info --device $DEV --out "$OUT_DIR/info.json"

# --- tests, in three groups of files run side by side (each its own process and time limit) -----
all_tests=$(ls -1 tests/test_*.py | LC_ALL=C sort)
group_sft=$(echo "$all_tests" | grep -E 'prob|objective' | tr '\n' ' ')
group_distill=$(echo "$all_tests" | grep -E 'distill' | grep -vE 'prob|objective' | tr '\n' ' ')
group_rest=$(echo "$all_tests" | grep -vE 'prob|objective|distill' | tr '\n' ' ')
if [ $DRY = 1 ]; then  # a fast subset: each group's first file with opcheck tests, only those
  pick() { for f in $1; do grep -q opcheck "$f" && { echo "$f"; return; }; done; echo "$1" | cut -d' ' -f1; }
  group_sft=$(pick "$group_sft") group_distill=$(pick "$group_distill") group_rest=$(pick "$group_rest")
  test_devices=cpu test_filter=(-k opcheck)
else
  test_devices=cuda test_filter=()
fi
limit=$(clamp 110)
if [ "$limit" = 0 ]; then
  for g in sft distill rest; do skip "tests_$g" "overall budget (${BUDGET}s) spent"; done
else
  echo "== tests (3 groups in parallel, limit ${limit}s each, $(date +%T))"
  declare -A pids=() starts=()
  for g in sft distill rest; do
    files_var="group_$g"
    # shellcheck disable=SC2086
    OBJX_TEST_DEVICES=$test_devices timeout -s INT -k 10 "$limit" "$PY" -m pytest ${!files_var} -m "not cpu_only" \
      ${test_filter[@]+"${test_filter[@]}"} -v -rfE --tb=short -p no:cacheprovider --junitxml="$OUT_DIR/tests_$g.xml" \
      >"$OUT_DIR/tests_$g.log" 2>&1 &
    pids[$g]=$! starts[$g]=$(date +%s)
  done
  for g in sft distill rest; do
    wait "${pids[$g]}"
    rc=$?
    [ $rc = 0 ] || tail -n 8 "$OUT_DIR/tests_$g.log" | sed 's/^/   | /'
    files_var="group_$g"
    st=$(status_of $rc) note="$(echo ${!files_var} | wc -w) files"
    [ $rc = 5 ] && st=skipped note="$note, no tests collected"
    record "tests_$g" "$st" $(( $(date +%s) - ${starts[$g]} )) $rc "$limit" "$note"
  done
fi

# --- memcheck, syncs, ncu ----------------------------------------------------------------------
if [ $DRY = 1 ]; then
  STEP_NOTE="dry run: the cases on CPU, without compute-sanitizer" \
    step memcheck 50 "$PY" bench/gpu_cases.py memcheck --device cpu --dtypes float32 \
      --out "$OUT_DIR/memcheck_cases.json"
  STEP_NOTE="dry run: CPU, no syncs measured" \
    step syncs 20 "$PY" bench/gpu_cases.py syncs --device cpu --out "$OUT_DIR/syncs.json"
  STEP_NOTE="dry run: the cases on CPU, without ncu" \
    step ncu 40 "$PY" bench/gpu_cases.py profile --device cpu --out "$OUT_DIR/profile_cases.json"
else
  # Without the caching allocator every tensor is its own allocation, so memcheck sees overruns.
  # shellcheck disable=SC2086
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 step memcheck 50 compute-sanitizer --tool memcheck --error-exitcode 1 \
    --print-limit 50 ${OBJX_MEMCHECK_FLAGS:-} "$PY" bench/gpu_cases.py memcheck --out "$OUT_DIR/memcheck_cases.json" \
    ${OBJX_MEMCHECK_DTYPES:+--dtypes $OBJX_MEMCHECK_DTYPES}
  step syncs 20 "$PY" bench/gpu_cases.py syncs --out "$OUT_DIR/syncs.json"
  step ncu 35 ncu --nvtx --print-summary per-kernel --target-processes all \
    -k "regex:objx|prob|distill|divergence|lse|logsumexp" --launch-count "${OBJX_NCU_LAUNCHES:-40}" \
    --log-file "$OUT_DIR/ncu.txt" "$PY" bench/gpu_cases.py profile --out "$OUT_DIR/profile_cases.json"
fi

# --- benchmarks ------------------------------------------------------------------------------
compile_flag=--no-compile
[ "${OBJX_GPU_COMPILE:-0}" = 1 ] && compile_flag=
bench() {  # bench NAME LIMIT ARGS...
  local name=$1 limit=$2; shift 2
  if [ $DRY = 1 ]; then
    step "$name" "$limit" "$PY" -m objx bench --device cpu --quiet --repeats 1 --no-compile "$@" --out "$OUT_DIR/$name.json"
  else
    # shellcheck disable=SC2086
    step "$name" "$limit" "$PY" -m objx bench --device cuda --quiet --dtype bfloat16 $compile_flag "$@" \
      --out "$OUT_DIR/$name.json"
  fi
}
if [ $DRY = 1 ]; then
  bench bench_logits 25 --shape 64x512 --objective nll --objective=-p
  bench bench_linear 25 --linear-shape 64x32x512 --objective nll
  bench bench_distill 20 --distill-shape 64x512 --linear-distill-shape 64x32x512
  bench bench_dpo 15 --divergence-shape 64x512 --dpo-shape 2x16x512
else
  bench bench_logits 25 --shape 8192x128256 --shape 8192x256000 --objective nll --objective=-p --objective=-p^10
  bench bench_linear 25 --objective nll --linear-shape 8192x4096x128256 --linear-shape 8192x2304x256000
  bench bench_distill 20 --distill-shape 8192x128256 --linear-distill-shape 8192x2304x256000
  bench bench_dpo 15 --divergence-shape 8192x128256 --dpo-shape 8x1024x128256
fi

# --- summary ---------------------------------------------------------------------------------
echo "== summary ($(( $(date +%s) - T0 ))s so far)"
timeout 10 "$PY" bench/gpu_summary.py "$OUT_DIR" --total-seconds $(( $(date +%s) - T0 ))
status=$?
echo "results in $OUT_DIR (exit $status)"
exit $status
