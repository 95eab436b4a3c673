#!/usr/bin/env bash
# benchmarks/gpu_run.sh OUTDIR   (or RESNET_FAST_BENCH_OUT=OUTDIR benchmarks/gpu_run.sh)
#
# On the GPU machine (torch with CUDA, nvcc, Triton; no network), from any directory:
#   1. pip install --no-build-isolation .  (the C++/CUDA extension, built against this torch)
#   2. python -m resnet_fast.info, and which resnet_fast is imported, with its extension status
#   3. the GPU test suite: pytest tests -m "not slow" -x -q        -> OUTDIR/tests.log
#   4. per-primitive bandwidth of the cuda and triton kernels -> OUTDIR/primitive_bandwidth.json
#      and OUTDIR/backend_table.json (the auto backend's choice; copy it to resnet_fast/ to ship);
#      benchmarks, op level then model level, eager and resnet_fast first, then torch.compile
#      (resnet50 default, op-level default, resnet50 max-autotune-no-cudagraphs), each phase
#      time-boxed so the whole script ends within RESNET_FAST_BENCH_BUDGET_S (default 570 s)
#   5. python benchmarks/summarize.py -> OUTDIR/summary.md, summary-{models,ops}.png, results.json
# Everything is logged to OUTDIR/run.log. Exit status: nonzero when the build, the tests, a
# benchmark or the summary failed; whatever was produced is kept either way.
#
# Environment: PYTHON (default python3), MAX_JOBS (default: all cores), PHASES (benchmark
# phases to run, default: primitives ops models models_compile ops_compile models_compile_max;
# add "sanitizer" for compute-sanitizer memcheck on the CUDA primitive tests),
# RESNET_FAST_BENCH_BUDGET_S, and the RESNET_FAST_BENCH_* knobs of benchmarks/bench_config.py.
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUDGET_S=${RESNET_FAST_BENCH_BUDGET_S:-570}
RESERVE_S=30
PHASES=${PHASES:-primitives ops models models_compile ops_compile models_compile_max}
source "$REPO/benchmarks/_phases.sh" "$@"

export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export RESNET_FAST_BENCH_DEVICE=${RESNET_FAST_BENCH_DEVICE:-cuda}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/resnet_fast_inductor}

# ---------------------------------------------------------------------------- 1. environment, build
phase env 60 "$OUT/run.log" bash -c 'nvidia-smi; nvcc --version | tail -2'
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
    TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
    export TORCH_CUDA_ARCH_LIST  # only this GPU's architecture: the build takes minutes per arch
fi
BUILD_OK=1
phase build 300 "$OUT/run.log" "$PY" -m pip install --no-build-isolation --no-deps --no-index -v "$REPO" \
    || { BUILD_OK=0; FAILED=1; log "FAIL build"; }

# ---------------------------------------------------------------------------- 2. run from a copy
# The repository's resnet_fast/ (no compiled extension) must not shadow the installed package:
# tests and benchmarks run from a scratch folder holding copies of tests/ and benchmarks/.
STAGE=$(mktemp -d /tmp/resnet_fast_run.XXXXXX)
cp -r "$REPO/benchmarks" "$REPO/pyproject.toml" "$STAGE/"
[[ -d "$REPO/tests" ]] && cp -r "$REPO/tests" "$STAGE/"
cd "$STAGE" || exit 1
if (( ! BUILD_OK )); then
    log "the build failed: benchmarking the source tree without its compiled extension (Triton/reference)"
    export PYTHONPATH="$REPO" RESNET_FAST_JIT=0
fi
phase info 120 "$OUT/run.log" "$PY" -m resnet_fast.info || log "(python -m resnet_fast.info failed)"
phase env_report 120 "$OUT/run.log" "$PY" benchmarks/env_report.py

# ---------------------------------------------------------------------------- 3. GPU tests
if [[ -d tests ]]; then
    phase tests 180 "$OUT/tests.log" "$PY" -m pytest tests -m "not slow" -x -q -p no:cacheprovider
    rc=$?
    (( rc != 0 )) && { FAILED=1; log "FAIL tests (exit $rc; see tests.log)"; }
else
    log "no tests/ directory in this checkout: GPU tests not run" | tee -a "$OUT/tests.log"
fi

# ---------------------------------------------------------------------------- 4. benchmarks
# Most important first; every phase writes its own JSON, so a phase cut short by the budget
# loses only itself (and keeps what finished: SIGTERM ends pytest like Ctrl-C).
# primitives: per-primitive GB/s of cuda and triton vs copy bandwidth, and the auto backend's
# table (copy $OUT/backend_table.json to resnet_fast/ to ship it).
if [[ " $PHASES " == *" primitives "* ]]; then
    phase primitives 120 "$OUT/run.log" "$PY" benchmarks/primitive_bandwidth.py "$OUT/primitive_bandwidth.json" \
        --quick --no-compile --backend-table "$OUT/backend_table.json" || { FAILED=1; log "FAIL primitives"; }
fi
bench ops 120 benchmarks/test_ops.py -k "not compile"
bench models 150 benchmarks/test_models.py -k "not compile"
bench models_compile 150 benchmarks/test_models.py -k "compile and not compile_max"
bench ops_compile 120 benchmarks/test_ops.py -k "compile"
bench models_compile_max 240 benchmarks/test_models.py -k "compile_max"

# sanitizer (not in the default PHASES: minutes): compute-sanitizer memcheck on the CUDA primitive tests.
if [[ " $PHASES " == *" sanitizer "* ]]; then
    phase sanitizer 300 "$OUT/sanitizer.log" compute-sanitizer --tool memcheck --error-exitcode 1 \
        "$PY" -m pytest tests/test_cuda_primitives.py -x -q -p no:cacheprovider || { FAILED=1; log "FAIL sanitizer"; }
fi

# ---------------------------------------------------------------------------- 5. summary
RESERVE_S=0
summarize
log "done: FAILED=$FAILED; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
rm -rf "$STAGE"
exit "$FAILED"
