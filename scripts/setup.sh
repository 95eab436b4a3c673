# Sourced by scripts/test.sh and scripts/demo.sh: on a machine with only Python 3.11,
# create (or reuse) a venv keyed by the pinned requirements, install resnet_fast into it
# exactly as the README says (pip install --no-build-isolation .), and activate it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
key=$(sha256sum "$repo/requirements/ci.txt" | cut -c1-16)
venv=${RESNET_FAST_VENV:-$HOME/.cache/resnet_fast/venv-$key}
# Built in place (a venv hardcodes its own path, so it cannot be moved into place); the
# marker file says the install finished, so an interrupted one is redone.
if [ ! -f "$venv/.complete" ]; then
    echo "== creating $venv (torch, torchvision, test tools)"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r "$repo/requirements/ci.txt"
    touch "$venv/.complete"
fi
source "$venv/bin/activate"
export MAX_JOBS=${MAX_JOBS:-2}
echo "== pip install --no-build-isolation $repo"
start=$(date +%s)
(cd "$repo" && python -m pip install -q --no-build-isolation --no-deps .)
echo "== installed in $(( $(date +%s) - start )) s"
