#!/usr/bin/env bash
# The test job: lint, type-check, stub freshness, the test suite, and a short form of the slow soak/fuzz tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages some tests use: the data set, a real Prometheus, and headless Chromium for the HTML report.
need=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v prometheus >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "installing Debian packages: ${need[*]} ..."
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") \
            || echo "could not install ${need[*]}: the tests that need them will be skipped, naming the package"
    else
        echo "missing Debian packages (apt-get install ${need[*]}): the tests that need them will be skipped"
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
