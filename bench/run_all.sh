#!/usr/bin/env bash
# Re-run every benchmark behind BENCHMARKS.md; results (JSON + PNG) go to bench/results/.
#   bash bench/run_all.sh          # full runs (~15 minutes on 2 cores)
#   bash bench/run_all.sh --quick  # reduced runs
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh edge,edge-images,server,train,dev
py=.venv/bin/python
out=bench/results
mkdir -p "$out"
$py -m bench.rate_accuracy --out "$out/rate_accuracy.json" "$@"
$py -m bench.entropy_bound --out "$out/entropy_bound.json" --rate-accuracy "$out/rate_accuracy.json"
$py -m bench.features_dump --out "$out/features_w16.npy"
$py -m bench.codec --features "$out/features_w16.npy" --out "$out/codec_real.json" "$@"
$py -m bench.features_dump --width 4 --out "$out/features_w4.npy"
$py -m bench.codec --features "$out/features_w4.npy" --out "$out/codec_real_w4.json" "$@"
$py -m bench.codec --out "$out/codec_synthetic.json" "$@"
$py -m bench.serving --out "$out/serving.json" "$@"
$py -m bench.workers --out "$out/workers.json" "$@"
$py -m bench.batching --out "$out/batching.json" "$@"
if [ -x .venv-triton/bin/python ]; then  # Triton beside slimsplit (python -m bench.peer --setup makes .venv-triton)
    $py -m bench.peer --out "$out/peer.json" "$@"
fi
$py -m bench.controller --out "$out/controller.json" "$@"
$py -m bench.decision_ab --base 8a71c27 --out "$out/decision_ab.json"  # mpc's decision cost against revision 8a71c27 (before its speed-up)
$py -m bench.transmission_study --out "$out/transmission_study.json" "$@"
$py -m bench.nested_planes --out "$out/nested_planes.json" "$@"
$py -m bench.planes --out "$out/planes.json" "$@"
$py -m bench.intar --out "$out/intar.json" "$@"
rm -f "$out/features_w16.npy" "$out/features_w4.npy"
# Trains two students (about 20 minutes on 2 cores) from the teacher that slimsplit-train wrote (README: Training):
#   $py -m bench.ensemble_vs_slices --teacher runs/default/teacher.ckpt --out "$out/ensemble_vs_slices.json"
