#!/usr/bin/env bash
# benchmarks/gpu_run.sh OUTDIR   (or RESNET_FAST_BENCH_OUT=OUTDIR benchmarks/gpu_run.sh)
#
# The first run on a GPU machine (torch with CUDA, nvcc, Triton; no network), from any directory.
# Most valuable results first, every phase time-boxed, the whole run within RESNET_FAST_BENCH_BUDGET_S
# (default 470 s, for a ~10 minute slot on one H100 with margin):
#   0. preflight   PATH gets the interpreter's bin (ninja) and CUDA's bin (nvcc); nvidia-smi and
#                  torch.cuda must see a GPU, else every later phase is skipped ("no GPU") at once
#   1. build       pip install --no-build-isolation . for this GPU's arch only -> OUTDIR/build.log
#                  (its tail goes to run.log; the compiler's warnings stay out of it)
#   2. info        python -m resnet_fast.info, then `python -m resnet_fast.info --check` when that
#                  flag exists (the backend self-check)
#   3. tests       only the GPU test files (CUDA and Triton primitives, the Triton ops, the CUDA edge
#                  cases once that file exists), slow ones included (batch 256, > 2^31 elements),
#                  --maxfail, a per-test timeout -> tests.log, tests.xml (JUnit, written as the session ends)
#   4. conv_layers each ResNet-50 bottleneck convolution (batch 256, bf16): the fused Triton kernels
#                  against ATen + the BN primitives, forward and backward -> conv_layers.json and the
#                  conv table, both rewritten after every layer (copy OUTDIR/conv_table.json to
#                  resnet_fast/ to ship it)
#   5. models      resnet50 training and inference: eager, torch.compile, rf_cuda, rf_triton, and training
#                  with each convolution backend (rf_cuda_conv_aten, rf_cuda_conv_triton)
#   6. ops_stage   every op at one stage (s1, 56x56), cuda and triton backends against eager
#   7. primitives  per-primitive GB/s (the JSON is rewritten after every row) and the auto backend's
#                  table (copy OUTDIR/backend_table.json to resnet_fast/ to ship it)
#   8. ops_rest    the other three stages
#   9. summary     benchmarks/summarize.py -> OUTDIR/summary.md, summary-{models,ops}.png, results.json
# Partial results as they come: OUTDIR/status.jsonl gets one line per phase when it ends (name,
# state, exit status, seconds); every benchmark phase has its own JSON (a phase cut short by the
# budget stops like Ctrl-C and keeps what finished). Everything is logged to OUTDIR/run.log.
# Exit status: 0 all phases passed, 1 some phase failed, 3 no GPU (the preflight failed; the other
# phases only checked that what they would run exists: the CPU dry run of tests/test_gpu_run.py).
#
# Environment: PYTHON (default python3), MAX_JOBS (default: all cores), RESNET_FAST_BENCH_BUDGET_S, PHASES,
# RESNET_FAST_GPU_RUN_SKIP ("build", "tests" or both: skipped; skip the build only where this checkout is
# installed already, e.g. a second run on the same machine), RESNET_FAST_TEST_TIMEOUT_S (per test, default
# 120), RESNET_FAST_TEST_MAXFAIL (default 10), and the RESNET_FAST_BENCH_* knobs of benchmarks/bench_config.py.
#
# Issue 20's comparison (the conv table, then resnet50 training: eager, torch.compile, resnet_fast with
# either convolution backend) fits one run when the tests are left out:
#   RESNET_FAST_GPU_RUN_SKIP=tests PHASES="conv_layers models" benchmarks/gpu_run.sh OUTDIR
# torch.compile(mode="max-autotune") of resnet50 training (compile_max) autotunes every GEMM and
# convolution shape of forward and backward: many minutes, more than one run's budget next to anything
# else. It is the opt-in phase models_compile_max, best run alone on a warm machine:
#   RESNET_FAST_GPU_RUN_SKIP="build tests" PHASES=models_compile_max RESNET_FAST_BENCH_BUDGET_S=580 ...
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUDGET_S=${RESNET_FAST_BENCH_BUDGET_S:-470}
RESERVE_S=20
# Benchmark phases to run (default below); add "models_compile_max" (resnet50 training, max-autotune: many
# minutes) or "sanitizer" (compute-sanitizer memcheck on the CUDA primitive tests: minutes) when there is time.
PHASES=${PHASES:-conv_layers models ops_stage primitives ops_rest}
SKIP=${RESNET_FAST_GPU_RUN_SKIP:-}
source "$REPO/benchmarks/_phases.sh" "$@"

export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export RESNET_FAST_BENCH_DEVICE=cuda
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/resnet_fast_inductor}
GPU_TESTS=(tests/test_cuda_primitives.py tests/test_triton_primitives.py tests/test_triton_ops.py)
# The CUDA edge cases (empty / huge / odd-strided inputs) join once their test file is in the checkout.
[[ -e "$REPO/tests/test_cuda_edge_cases.py" ]] && GPU_TESTS+=(tests/test_cuda_edge_cases.py)
TEST_TIMEOUT_S=${RESNET_FAST_TEST_TIMEOUT_S:-120}
MAXFAIL=${RESNET_FAST_TEST_MAXFAIL:-10}
HAVE_GPU=0
NO_GPU_WHY=""

# status NAME STATE RC SECONDS: one JSON line per phase, appended as the phase ends.
status() {
    printf '{"phase": "%s", "state": "%s", "rc": %s, "seconds": %s}\n' "$1" "$2" "$3" "$4" >> "$OUT/status.jsonl"
}

# skipped NAME: whether NAME is in RESNET_FAST_GPU_RUN_SKIP (then say so in run.log and status.jsonl).
skipped() {
    case " $SKIP " in *" $1 "*) ;; *) return 1 ;; esac
    log "SKIP $1: in RESNET_FAST_GPU_RUN_SKIP"
    status "$1" skipped 0 0
}

# gpu_phase NAME CAP_S LOGFILE NEEDS -- CMD...: phase() (time-boxed) when there is a GPU; without one,
# only check that NEEDS (files the command runs, space-separated, relative to the repository) exist.
gpu_phase() {
    local name=$1 cap=$2 logfile=$3 needs=$4
    shift 5
    local f missing=""
    for f in $needs; do [[ -e "$REPO/$f" ]] || missing+=" $f"; done
    if [[ -n "$missing" ]]; then
        log "FAIL $name: missing$missing"
        FAILED=1
        status "$name" missing 2 0
        return 2
    fi
    if (( ! HAVE_GPU )); then
        log "SKIP $name: no GPU ($NO_GPU_WHY); would run: $*"
        status "$name" no_gpu 0 0
        return 0
    fi
    local start rc
    start=$(date +%s)
    phase "$name" "$cap" "$logfile" "$@"
    rc=$?
    local state=ok
    case $rc in 0) ;; 124|137) state=timeout ;; 125) state=skipped_budget ;; *) state=failed ;; esac
    status "$name" "$state" "$rc" $(( $(date +%s) - start ))
    return "$rc"
}

# ---------------------------------------------------------------------------- 0. preflight
CUDA_ROOT=${CUDA_HOME:-/usr/local/cuda}
PY_BIN=$(dirname "$(command -v "$PY" || echo "$PY")")
export PATH="$PY_BIN:$CUDA_ROOT/bin:$PATH"  # ninja beside the interpreter, nvcc in the toolkit
log "preflight: PATH starts $PY_BIN:$CUDA_ROOT/bin; python $(command -v "$PY" || echo "$PY: not found")"
start=$(date +%s)
if ! command -v nvidia-smi > /dev/null; then
    NO_GPU_WHY="nvidia-smi not found"
elif ! timeout 20 nvidia-smi -L >> "$OUT/run.log" 2>&1; then
    NO_GPU_WHY="nvidia-smi -L failed"
elif ! timeout 60 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >> "$OUT/run.log" 2>&1; then
    NO_GPU_WHY="torch.cuda.is_available() is False"
else
    HAVE_GPU=1
fi
if (( HAVE_GPU )); then
    command -v nvcc > /dev/null || log "preflight: nvcc not found under $CUDA_ROOT/bin (the build will be Triton-only)"
    command -v ninja > /dev/null || log "preflight: ninja not found on PATH (the build falls back to setuptools, slower)"
    log "preflight: GPU $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    status preflight ok 0 $(( $(date +%s) - start ))
else
    log "preflight: no GPU ($NO_GPU_WHY): every phase below is skipped"
    status preflight no_gpu 3 $(( $(date +%s) - start ))
fi

# ---------------------------------------------------------------------------- 1. build
if (( HAVE_GPU )) && [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
    TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
    export TORCH_CUDA_ARCH_LIST  # only this GPU's architecture: the build takes minutes per arch
fi
BUILD_OK=1
skipped build || gpu_phase build 240 "$OUT/build.log" "setup.py pyproject.toml" -- \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -v "$REPO" > /dev/null \
    || { BUILD_OK=0; FAILED=1; log "FAIL build (tail of build.log follows)"; }
[[ -s "$OUT/build.log" ]] && tail -n 30 "$OUT/build.log" >> "$OUT/run.log"

# ---------------------------------------------------------------------------- 2. run from a copy
# The repository's resnet_fast/ (no compiled extension) must not shadow the installed package:
# tests and benchmarks run from a scratch folder holding copies of tests/ and benchmarks/.
STAGE=$(mktemp -d /tmp/resnet_fast_run.XXXXXX)
cp -r "$REPO/benchmarks" "$REPO/pyproject.toml" "$STAGE/"
[[ -d "$REPO/tests" ]] && cp -r "$REPO/tests" "$STAGE/"
cd "$STAGE" || exit 1
if (( HAVE_GPU && ! BUILD_OK )); then
    log "the build failed: testing the source tree without its compiled extension (Triton/reference)"
    export PYTHONPATH="$REPO" RESNET_FAST_JIT=0
fi

gpu_phase info 60 "$OUT/run.log" "resnet_fast/info.py" -- "$PY" -m resnet_fast.info || log "(resnet_fast.info failed)"
gpu_phase env_report 60 "$OUT/run.log" "benchmarks/env_report.py" -- "$PY" benchmarks/env_report.py
# `info --check` (the backends' self-check) is called only once resnet_fast.info has that flag.
INFO_HELP=""
(( HAVE_GPU )) && INFO_HELP=$("$PY" -m resnet_fast.info --help 2>&1 || true)
if (( HAVE_GPU )) && [[ "$INFO_HELP" != *--check* ]]; then
    log "SKIP info_check: resnet_fast.info has no --check yet"
    status info_check absent 0 0
else
    # 150 s: with a cold Triton cache the check compiles every kernel variant it runs (tens of seconds)
    gpu_phase info_check 150 "$OUT/run.log" "resnet_fast/info.py" -- "$PY" -m resnet_fast.info --check \
        || { FAILED=1; log "FAIL info --check (a backend failed its self-check)"; }
fi

# ---------------------------------------------------------------------------- 3. GPU tests
TIMEOUT_ARGS=()
if "$PY" -c "import pytest_timeout" 2> /dev/null; then
    TIMEOUT_ARGS=(--timeout "$TEST_TIMEOUT_S")
else
    log "pytest-timeout is not installed: no per-test timeout (the phase limit still holds)"
fi
skipped tests || gpu_phase tests 150 "$OUT/tests.log" "${GPU_TESTS[*]}" -- \
    "$PY" -m pytest "${GPU_TESTS[@]}" -q -p no:cacheprovider -rfE --maxfail "$MAXFAIL" ${TIMEOUT_ARGS[@]+"${TIMEOUT_ARGS[@]}"} \
    --junitxml "$OUT/tests.xml" \
    || { FAILED=1; log "FAIL tests (see tests.log)"; }

# ---------------------------------------------------------------------------- 4-8. benchmarks
# bench (from _phases.sh) writes OUTDIR/parts/NAME.json; only under a GPU.
gpu_bench() {
    local name=$1 cap=$2 file=$3
    shift 3
    case " $PHASES " in *" $name "*) ;; *) return 0 ;; esac
    if [[ ! -e "$REPO/$file" ]]; then
        log "FAIL $name: missing $file"
        FAILED=1
        status "$name" missing 2 0
        return
    fi
    if (( ! HAVE_GPU )); then
        log "SKIP $name: no GPU ($NO_GPU_WHY); would run: pytest $file $*"
        status "$name" no_gpu 0 0
        return
    fi
    local start failed_before=$FAILED
    start=$(date +%s)
    bench "$name" "$cap" "$file" "$@"
    status "$name" "$( (( FAILED != failed_before )) && echo failed || echo done)" 0 $(( $(date +%s) - start ))
}
# The conv table first: the fused kernels it compiles stay in Triton's cache for the models' rf_*_conv_triton
# rows. Cut short by its limit it keeps the layers that finished (JSON and table are rewritten per layer).
if [[ " $PHASES " == *" conv_layers "* ]]; then
    gpu_phase conv_layers 150 "$OUT/run.log" "benchmarks/conv_layers.py resnet_fast/conv_backend.py" -- \
        "$PY" benchmarks/conv_layers.py "$OUT/conv_layers.json" --table "$OUT/conv_table.json"
    case $? in
        0) ;;
        124|137) log "conv_layers: time limit (conv_layers.json and conv_table.json hold the layers that finished)" ;;
        125) ;;  # no time left: phase() said so
        *) FAILED=1; log "FAIL conv_layers (a fused result off, or a crash: see run.log)" ;;
    esac
fi
# Training with each convolution backend on the cuda primitives (rf_triton_conv_*: the same kernels for
# the convolutions, time spent elsewhere); max-autotune (compile_max) is its own phase.
# The "auto" rows take the conv table this run wrote (when it wrote one), not the shipped one.
[[ -s "$OUT/conv_table.json" ]] && export RESNET_FAST_CONV_TABLE="$OUT/conv_table.json"
RESNET_FAST_BENCH_MODELS=resnet50 RESNET_FAST_BENCH_BACKENDS=cuda,triton RESNET_FAST_BENCH_COMPILE_MODELS=resnet50 \
    gpu_bench models 180 benchmarks/test_models.py -k "not compile_max and not low_memory and not rf_triton_conv"
RESNET_FAST_BENCH_BACKENDS=cuda,triton RESNET_FAST_BENCH_COMPILE=0 \
    gpu_bench ops_stage 60 benchmarks/test_ops.py -k "s1"
if [[ " $PHASES " == *" primitives "* ]]; then
    gpu_phase primitives 60 "$OUT/run.log" "benchmarks/primitive_bandwidth.py" -- \
        "$PY" benchmarks/primitive_bandwidth.py "$OUT/primitive_bandwidth.json" --quick --no-compile \
        --backend-table "$OUT/backend_table.json" || { FAILED=1; log "FAIL primitives"; }
fi
RESNET_FAST_BENCH_BACKENDS=cuda,triton RESNET_FAST_BENCH_COMPILE=0 \
    gpu_bench ops_rest 120 benchmarks/test_ops.py -k "not s1"
# Opt-in: resnet50 training under torch.compile(mode="max-autotune") with conv_1x1_as_mm (bench_config),
# eager again beside it (the baseline of its own run, when it runs alone).
RESNET_FAST_BENCH_MODELS=resnet50 RESNET_FAST_BENCH_BACKENDS=cuda,triton \
    gpu_bench models_compile_max 540 benchmarks/test_models.py -k "train and (eager or compile_max)"
if [[ " $PHASES " == *" sanitizer "* ]]; then
    gpu_phase sanitizer 300 "$OUT/sanitizer.log" "tests/test_cuda_primitives.py" -- \
        compute-sanitizer --tool memcheck --error-exitcode 1 \
        "$PY" -m pytest tests/test_cuda_primitives.py -x -q -p no:cacheprovider || { FAILED=1; log "FAIL sanitizer"; }
fi

# ---------------------------------------------------------------------------- 9. summary
RESERVE_S=0
if (( HAVE_GPU )); then
    summarize
else
    log "SKIP summary: no GPU"
    status summary no_gpu 0 0
fi
log "done: FAILED=$FAILED HAVE_GPU=$HAVE_GPU; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
rm -rf "$STAGE"
if (( FAILED )); then exit 1; fi
if (( ! HAVE_GPU )); then exit 3; fi
exit 0
