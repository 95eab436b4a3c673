#!/usr/bin/env bash
# The main job, set-up included: trains resnet18 (fused ops) on scikit-learn's bundled digits
# and writes checkpoints, metrics and curves.png to runs/digits-resnet18.
#   bash scripts/demo.sh [more resnet_fast.train flags]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$repo"
python -m resnet_fast.info
python -m resnet_fast.train --data digits --plot "$@"
