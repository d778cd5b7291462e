#!/usr/bin/env bash
# The test job: lint, type-check, stub freshness, the test suite, and a short form of the slow soak/fuzz tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist) ..."
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
            || echo "could not install dataset-fashion-mnist: tests that need the full data set will be skipped"
    else
        echo "Fashion-MNIST missing (apt-get install dataset-fashion-mnist): tests that need it will be skipped"
    fi
fi
echo "== .venv (edge, edge-images, server, train, dev)"; scripts/setup-venv.sh edge,edge-images,server,train,dev
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy"; mypy
# the role folders on PYTHONPATH: grimp finds the namespace package's folders there (see [tool.importlinter])
echo "== import layers"; PYTHONPATH="$PWD:$PWD/edge:$PWD/server:$PWD/apps" lint-imports
echo "== generated stubs are fresh"; python tools/gen_protos.py --check
echo "== pytest"; pytest -m "not slow" "$@"
echo "== pytest (slow soak/fuzz, short form)"; SLIMSPLIT_SOAK=short pytest -m slow -q "$@"
