#!/usr/bin/env bash
# The main job: a server and an edge client on loopback with the shipped bundle and sample images, over an
# emulated uplink driven by the shipped synthetic trace. Extra arguments go to slimsplit-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh edge,server
exec .venv/bin/slimsplit-demo "$@"
