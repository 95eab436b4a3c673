#!/usr/bin/env bash
# The main job, set-up included: trains resnet18 (fused ops) on scikit-learn's bundled digits
# with the installed package, and says where the checkpoints, metrics and curves.png went.
#   bash scripts/demo.sh [more resnet_fast.train flags]
#   RESNET_FAST_DEMO_OUT=/some/dir bash scripts/demo.sh     # default: runs/digits-resnet18 here (git-ignored)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
out=${RESNET_FAST_DEMO_OUT:-$repo/runs/digits-resnet18}
for ((i = 1; i <= $#; i++)); do  # an --output-dir given here wins (the last one, as argparse); made absolute before the cd below
    case "${!i}" in
        --output-dir) j=$((i + 1)); out=${!j} ;;
        --output-dir=*) out=${!i#--output-dir=} ;;
    esac
done
out=$(mkdir -p "$out" && cd "$out" && pwd)
# Outside the source tree, so that Python imports the installed package (with the extension
# built by the install above), not the resnet_fast/ folder of the checkout.
cd "${TMPDIR:-/tmp}"
python -m resnet_fast.info
python -m resnet_fast.train --data digits --plot "$@" --output-dir "$out"
echo "== outputs in $out: last.pt, best.pt (checkpoints), metrics.jsonl, steps.jsonl, curves.png"
echo "   classify an image: python -m resnet_fast.predict IMAGE --checkpoint $out/best.pt"
