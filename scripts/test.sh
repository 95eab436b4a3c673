#!/usr/bin/env bash
# The whole test suite, set-up included (what .ci/run calls):
#   bash scripts/test.sh [extra pytest arguments]
# Runs the installed package (pytest's console script does not put the repo on sys.path).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$repo"
(cd /tmp && python -m resnet_fast.info)
echo "== tests"
pytest tests -m "not slow" -p no:cacheprovider --timeout=900 -q "$@"
echo "== benchmarks, smoke mode (checks they run and agree with eager; times are meaningless here)"
RESNET_FAST_BENCH_SMOKE=1 pytest benchmarks --benchmark-disable -p no:cacheprovider --timeout=900 -q
