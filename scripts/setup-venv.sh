#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with the given extras.
#   scripts/setup-venv.sh edge,server        # what the demo needs
#   scripts/setup-venv.sh edge,edge-images,server,train,dev   # everything (tests)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-edge,server}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=".venv/.slimsplit-extras-$(echo "$extras" | tr ',' '_')"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setting up .venv with extras [$extras] ..."
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[${extras}]"
    touch "$stamp"
fi
