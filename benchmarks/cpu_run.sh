#!/usr/bin/env bash
# benchmarks/cpu_run.sh OUTDIR   (or RESNET_FAST_BENCH_OUT=OUTDIR benchmarks/cpu_run.sh)
#
# CPU benchmarks from this checkout (no install): fp32, channels_last, RESNET_FAST_BENCH_THREADS
# threads (default 2); op level then model level, eager and resnet_fast first, then
# torch.compile (default mode; resnet50 only at model level), then the summary:
# OUTDIR/run.log, results.json, summary.md, summary-{models,ops}.png. Budget RESNET_FAST_BENCH_BUDGET_S
# (default 1500 s: the whole run takes about that on 2 cores).
#
# The C++ CPU kernels are compiled at first use (cached in ~/.cache/resnet_fast) unless
# RESNET_FAST_JIT=0, which benchmarks the reference backend only.
#
# Environment: PYTHON (default python3; here /work/venvs/dev/bin/python), PHASES (default:
# ops models models_infer models_compile models_compile_infer ops_compile interleaved), and the
# RESNET_FAST_BENCH_* knobs of benchmarks/bench_config.py.
# Example, op level only, reference backend:
#   PYTHON=/work/venvs/dev/bin/python RESNET_FAST_JIT=0 PHASES=ops benchmarks/cpu_run.sh /tmp/bench-cpu
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUDGET_S=${RESNET_FAST_BENCH_BUDGET_S:-1500}
RESERVE_S=30
PHASES=${PHASES:-ops models models_infer models_compile models_compile_infer ops_compile interleaved}
source "$REPO/benchmarks/_phases.sh" "$@"

cd "$REPO" || exit 1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export RESNET_FAST_BENCH_DEVICE=cpu
export MAX_JOBS=${MAX_JOBS:-2}

phase info 600 "$OUT/run.log" "$PY" -m resnet_fast.info || log "(python -m resnet_fast.info failed)"
phase env_report 600 "$OUT/run.log" "$PY" benchmarks/env_report.py || { FAILED=1; log "FAIL env_report"; }

bench ops 240 benchmarks/test_ops.py -k "not compile"
# Training and inference rows run in separate processes: after a training step the process
# keeps enough freed memory that inference's large activations no longer fault in fresh
# pages, which on this kind of machine makes eager inference ~1.6x faster than in a process
# that only infers (as a server does). Each mode is timed in a process that does only it.
bench models 300 benchmarks/test_models.py -k "train and not compile"
bench models_infer 200 benchmarks/test_models.py -k "infer and not compile"
bench models_compile 300 benchmarks/test_models.py -k "compile and train"
bench models_compile_infer 200 benchmarks/test_models.py -k "compile and infer"
bench ops_compile 300 benchmarks/test_ops.py -k "compile"
# The same resnet50 steps (and op calls) timed round by round, every contender in each round
# (interleaved.py): the rows above time one contender after another, which on a CPU moves the
# ratio (README).
case " $PHASES " in *" interleaved "*)
    best=$("$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import bench_config as c; print(c.settings().backends[0])")
    for mode in train infer; do
        contenders=eager,compile,rf_$best
        [[ $mode == train ]] && contenders+=,rf_${best}_low_memory
        phase "interleaved:$mode" 420 "$OUT/run.log" "$PY" benchmarks/interleaved.py --model resnet50 \
            --mode "$mode" --contenders "$contenders" --rounds 10 --warmup 2 --out "$OUT" \
            || { FAILED=1; log "FAIL interleaved:$mode"; }
    done
    # The BN + activation ops, forward+backward, at the four stage shapes, rounds of >= 20 ms.
    phase "interleaved:ops" 300 "$OUT/run.log" "$PY" benchmarks/interleaved.py \
        --ops bn_relu,bn_add_relu,squeeze_excite --op-mode fwdbwd --contenders "eager,rf_$best" \
        --rounds 15 --warmup 2 --out "$OUT" \
        || { FAILED=1; log "FAIL interleaved:ops"; } ;;
*) log "SKIP interleaved: not in PHASES" ;;
esac

RESERVE_S=0
summarize
log "done: FAILED=$FAILED; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit "$FAILED"
