#!/usr/bin/env bash
# GPU check, one prepared script for a host with an NVIDIA GPU (issue 17 section 6):
#   1. do the GPU tails agree with the CPU ones on the shipped samples: slimsplit's ONNX Runtime CUDA backend,
#      its torch CUDA backend, and Triton's Python-backend model on KIND_GPU, each against slimsplit's
#      ONNX Runtime CPU backend (python -m bench.peer_gpu agree);
#   2. throughput of slimsplit and Triton on the GPU at 64 and 256 frames in flight, unary and stream, with
#      batching on (both servers' batch limit 64) and off (1), interleaved as in bench/peer.py;
#   3. one table, one JSON (default bench/results/gpu_check.json).
# Without a GPU it says so and exits 0: nothing here is needed for the tests to pass.
#
# usage: bench/gpu_check.sh [--quick] [--out FILE]
#   PYTHON=...        the project's Python with onnxruntime-gpu and torch with CUDA (default .venv/bin/python)
#   TRITON_VENV=...   Triton's venv (default .venv-triton; `python -m bench.peer --setup` on this host makes it,
#                     with onnxruntime-gpu). Missing: the Triton parts are reported unavailable, not failed.
# exit: 0 all available engines agree (or no GPU); 1 a disagreement or a failed run; 2 a usage error.
set -euo pipefail
cd "$(dirname "$0")/.."

out=bench/results/gpu_check.json
quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --out)
            [ $# -ge 2 ] || { echo "error: --out needs a file" >&2; exit 2; }
            out=$2
            shift
            ;;
        -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "error: unknown argument: $1 (usage: bench/gpu_check.sh [--quick] [--out FILE])" >&2; exit 2 ;;
    esac
    shift
done

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no GPU: nvidia-smi finds no NVIDIA GPU on this host; nothing to check (exit 0)."
    exit 0
fi

python=${PYTHON:-.venv/bin/python}
triton_venv=${TRITON_VENV:-.venv-triton}
if ! "$python" -c "import slimsplit" >/dev/null 2>&1; then
    echo "error: $python cannot import slimsplit (set PYTHON= to the project's venv)" >&2
    exit 1
fi

echo "==> GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1

status=0
echo "==> 1/3 agreement of the GPU tails with the CPU ones"
"$python" -m bench.peer_gpu agree --device cuda --triton-venv "$triton_venv" --out "$work/agree.json" || status=1

ncpu=$(nproc)
cpus=$(seq -s, 0 $((ncpu - 1)))
clients=$((ncpu / 2 > 2 ? ncpu / 2 : 2))
if [ "$quick" -eq 1 ]; then
    timing=(--reps 1 --duration 2 --warmup 1)
else
    timing=(--reps 3 --duration 5 --warmup 1)
fi
step=2
for batching in on off; do
    max_batch=64
    [ "$batching" = on ] || max_batch=1
    echo "==> $step/3 throughput on the GPU, batching $batching (max batch $max_batch), cpus 0-$((ncpu - 1))"
    if [ -x "$triton_venv/bin/python" ]; then
        "$python" -m bench.peer --device gpu --triton-venv "$triton_venv" --in-flight 64,256 \
            --transports unary,stream --max-batch "$max_batch" --cpus "$cpus" --clients "$clients" \
            "${timing[@]}" --out "$work/peer_$batching.json" || status=1
    else
        echo "    skipped: no $triton_venv (python -m bench.peer --setup)"
    fi
    step=3
done

echo "==> report"
"$python" -m bench.peer_gpu report "$work/agree.json" "$work/peer_on.json" "$work/peer_off.json" \
    --out "$out" || status=1
exit "$status"
