#!/usr/bin/env bash
# Every allocator setting docs/performance.md compares, one process each (benchmarks/allocator_faults.py):
#   PYTHON=venv/bin/python JEMALLOC=/path/libjemalloc.so.2 [ARGS="--steps 2"] bash benchmarks/allocator_faults.sh OUT.jsonl
set -euo pipefail
out=${1:?usage: allocator_faults.sh OUT.jsonl}
py=${PYTHON:-python}
here=$(dirname "${BASH_SOURCE[0]}")
run() { local label=$1; shift; env "$@" "$py" "$here/allocator_faults.py" --label "$label" ${ARGS:-} | tee -a "$out"; }
: > "$out"
run default
run mmap+trim_threshold GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184
run mmap_max=0+trim_threshold GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
if [[ -n "${JEMALLOC:-}" ]]; then
    # What python -m torch.backends.xeon.run_cpu --enable-jemalloc sets.
    run jemalloc-run_cpu LD_PRELOAD="$JEMALLOC" MALLOC_CONF=oversize_threshold:1,background_thread:true,metadata_thp:auto
    # The same with purging of freed pages turned off (-1: never decay), as run_cpu once set it.
    run jemalloc-no-decay LD_PRELOAD="$JEMALLOC" \
        MALLOC_CONF=oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1
    run jemalloc-defaults LD_PRELOAD="$JEMALLOC"   # jemalloc's own defaults, no MALLOC_CONF
fi
