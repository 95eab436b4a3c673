# Shared by gpu_run.sh and cpu_run.sh (sourced, not run): time-boxed phases and benchmark runs.
#
# Sourced with the script's arguments: sets OUT (absolute output folder, from $1 or
# RESNET_FAST_BENCH_OUT) and PY (python). Expects: BUDGET_S (seconds for the whole run),
# RESERVE_S (seconds kept for the summary at the end), PHASES (benchmark phases to run).

OUT=${1:-${RESNET_FAST_BENCH_OUT:-}}
if [[ -z "$OUT" ]]; then
    echo "usage: $0 OUTDIR   (or set RESNET_FAST_BENCH_OUT)" >&2
    exit 2
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}

START_S=$(date +%s)
FAILED=0
mkdir -p "$OUT/parts"

log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - START_S ))s] $*" | tee -a "$OUT/run.log"; }

remaining() { echo $(( BUDGET_S - ($(date +%s) - START_S) - RESERVE_S )); }

# phase NAME CAP_S LOGFILE CMD...: run CMD under `timeout`, at most CAP_S seconds and never past
# the budget; its output goes to the terminal and LOGFILE. Returns CMD's status (124: timed out,
# 125: skipped, no time left). On SIGTERM the benchmarks stop like Ctrl-C and still write JSON.
phase() {
    local name=$1 cap=$2 logfile=$3
    shift 3
    local left limit rc
    left=$(remaining)
    limit=$(( cap < left ? cap : left ))
    if (( limit < 15 )); then
        log "SKIP $name: the time budget is spent"
        return 125
    fi
    log "BEGIN $name (limit ${limit}s): $*"
    timeout -k 20 "$limit" "$@" 2>&1 | tee -a "$logfile"
    rc=${PIPESTATUS[0]}
    log "END $name: exit $rc$( (( rc == 124 || rc == 137 )) && echo ' (time limit: JSON holds what finished)')"
    return "$rc"
}

# bench NAME CAP_S TEST_FILE [PYTEST ARGS...]: one benchmark phase -> $OUT/parts/NAME.json.
# Runs only when NAME is listed in PHASES. pytest status 5 (nothing collected) is not a failure;
# failing benchmarks (a contender disagreeing with eager, a crash) are.
bench() {
    local name=$1 cap=$2 file=$3
    shift 3
    case " $PHASES " in *" $name "*) ;; *) log "SKIP $name: not in PHASES"; return 0 ;; esac
    BENCH_RAN=1
    phase "bench:$name" "$cap" "$OUT/run.log" "$PY" -m pytest "$file" -q -p no:cacheprovider -rfEs \
        --benchmark-json="$OUT/parts/$name.json" --benchmark-columns=median,iqr,rounds,iterations \
        --benchmark-sort=fullname "$@"
    local rc=$?
    case $rc in
        0|5|124|125|137) ;;
        *) log "FAIL bench:$name (exit $rc)"; FAILED=1 ;;
    esac
}

# summarize: merge the phases' JSON -> results.json, summary.md, summary-models.png, summary-ops.png (then drop the parts);
# the convolution layers (conv_layers.json, gpu_run.sh) get a table of their own in summary.md.
summarize() {
    local parts=("$OUT"/parts/*.json)
    if [[ ! -e "${parts[0]}" ]]; then
        if [[ -z ${BENCH_RAN:-} ]]; then  # e.g. PHASES=interleaved only
            log "no pytest benchmark phase ran: no summary"
            rmdir "$OUT/parts" 2>/dev/null
            return
        fi
        log "no benchmark JSON was written: no summary"
        FAILED=1
        return
    fi
    log "summary of ${#parts[@]} JSON file(s)"
    local interleaved=("$OUT"/interleaved-*.json)
    [[ -e "${interleaved[0]}" ]] || interleaved=()
    local conv=()
    [[ -s "$OUT/conv_layers.json" ]] && conv=(--conv-layers "$OUT/conv_layers.json")
    if "$PY" benchmarks/summarize.py "${parts[@]}" --out "$OUT/summary" --merged "$OUT/results.json" \
            --interleaved "${interleaved[@]}" ${conv[@]+"${conv[@]}"} 2>&1 \
            | tee -a "$OUT/run.log" && [[ -s "$OUT/results.json" ]]; then
        rm -rf "$OUT/parts"
    else
        log "FAIL summary (the per-phase JSON stays in $OUT/parts)"
        FAILED=1
    fi
}
