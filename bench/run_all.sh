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
$py bench/rate_accuracy.py --out "$out/rate_accuracy.json" "$@"
$py bench/entropy_bound.py --out "$out/entropy_bound.json" --rate-accuracy "$out/rate_accuracy.json"
$py bench/features_dump.py --out "$out/features_w16.npy"
$py bench/codec.py --features "$out/features_w16.npy" --out "$out/codec_real.json" "$@"
$py bench/features_dump.py --width 4 --out "$out/features_w4.npy"
$py bench/codec.py --features "$out/features_w4.npy" --out "$out/codec_real_w4.json" "$@"
$py bench/codec.py --out "$out/codec_synthetic.json" "$@"
$py bench/serving.py --out "$out/serving.json" "$@"
$py bench/controller.py --out "$out/controller.json" "$@"
$py bench/decision_ab.py --base 8a71c27 --out "$out/decision_ab.json"  # mpc cost against the version before the 2026-11-26 speed-up
$py bench/transmission_study.py --out "$out/transmission_study.json" "$@"
$py bench/nested_planes.py --out "$out/nested_planes.json" "$@"
$py bench/intar.py --out "$out/intar.json" "$@"
rm -f "$out/features_w16.npy" "$out/features_w4.npy"
# Trains two students (about 20 minutes on 2 cores) from the teacher that slimsplit-train wrote (README: Training):
#   $py bench/ensemble_vs_slices.py --teacher runs/default/teacher.ckpt --out "$out/ensemble_vs_slices.json"
