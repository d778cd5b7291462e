#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with the given extras.
#   scripts/setup-venv.sh edge,server        # what the demo needs
#   scripts/setup-venv.sh edge,edge-images,server,train,dev   # everything (tests)
# pip reports each package it collects and installs; on a terminal (outside CI) it also draws download bars.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-edge,server}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "creating the virtual environment .venv with $("$python" --version 2>&1) ..."
    "$python" -m venv .venv
fi
stamp=".venv/.slimsplit-extras-$(echo "$extras" | tr ',' '_')"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    progress=off
    if [ -t 1 ] && [ "${CI:-}" != "true" ]; then
        progress=on
    fi
    echo "setting up .venv: slimsplit (editable) with extras [$extras] and the packages they need;"
    echo "with torch (the server and train extras) the first time downloads several hundred MB and takes a few"
    echo "minutes; later runs only check what is installed ..."
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install --progress-bar "$progress" -e ".[${extras}]"
    touch "$stamp"
    echo ".venv is ready (extras [$extras])"
fi
