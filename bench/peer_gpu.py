"""The Python half of bench/gpu_check.sh: do the GPU tails agree with the CPU ones, and the merged report.

``agree``: for every tail of the shipped bundle (its widest-bit mode), the shipped samples through the edge
encoder and the codec, decoded, then the logits of the reference (slimsplit's ONNX Runtime backend on CPU)
against slimsplit's ONNX Runtime backend and torch backend on ``--device`` (cuda on a GPU host), and Triton's model
(bench/peer_repo.py's repository, KIND_GPU on cuda) through gRPC. An engine agrees when top-1 classes match on
>= 99% of the inputs and the largest logit difference is <= 1% of the largest logit. An engine that cannot run
here (no CUDA provider, no torch with CUDA, no .venv-triton) is reported ``unavailable`` with the reason.

``report``: the agreement and two bench/peer.py runs (batching on, batching off) as one table and one JSON.

    python -m bench.peer_gpu agree --device cuda --out agree.json
    python -m bench.peer_gpu report agree.json peer_on.json peer_off.json --out bench/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench import peer
from bench.peer_repo import RepoOptions, tail_models, write_repository

TOP1_MIN = 0.99
LOGIT_RTOL = 0.01


def compare(ref: npt.NDArray[np.float32], got: npt.NDArray[np.float32]) -> dict[str, Any]:
    """How ``got`` logits agree with ``ref`` (same shape): top-1 agreement, largest difference, verdict."""
    if got.shape != ref.shape:
        return {"status": "MISMATCH", "why": f"shape {list(got.shape)} != {list(ref.shape)}"}
    top1 = float(np.mean(np.argmax(got, axis=1) == np.argmax(ref, axis=1)))
    max_abs = float(np.max(np.abs(got.astype(np.float64) - ref)))
    scale = float(np.max(np.abs(ref)))
    ok = top1 >= TOP1_MIN and max_abs <= LOGIT_RTOL * max(scale, 1.0)
    return {"status": "ok" if ok else "MISMATCH", "top1_agreement": top1, "max_abs_diff": max_abs, "logit_scale": scale}


def _mode_per_tail(bundle_path: Path) -> dict[str, str]:
    """Triton model name -> the mode with the most bits among the modes using that tail."""
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    bits = {m["name"]: int(m["bits"]) for m in manifest["modes"]}
    return {t.name: max(t.modes, key=lambda name: bits[name]) for t in tail_models(bundle_path)}


def _triton_providers(install: peer.TritonInstall) -> list[str]:
    code = "import onnxruntime as o, json; print(json.dumps(o.get_available_providers()))"
    done = subprocess.run(
        [str(install.python), "-c", code], env=install.env(), capture_output=True, text=True, timeout=120, check=False
    )
    providers: list[str] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else []
    return providers


def agree(device: str, triton_venv: Path) -> dict[str, Any]:
    from slimsplit.bundle import Bundle
    from slimsplit.errors import SlimsplitError
    from slimsplit.server.backends.registry import create_backend
    from slimsplit.server.config import BackendConfig

    bundle_path = peer._bundle_path()
    bundle = Bundle.open(bundle_path)
    modes = _mode_per_tail(bundle_path)
    root = Path(tempfile.mkdtemp(prefix="slimsplit-gpu-check-"))
    inputs: dict[str, tuple[peer.Workload, npt.NDArray[np.float32]]] = {}
    for name, mode in modes.items():
        folder = root / name
        folder.mkdir()
        workload = peer.make_workload(folder, mode)
        with np.load(workload.path) as z:
            inputs[name] = (workload, np.asarray(z["features"], dtype=np.float32))
    reference = create_backend(BackendConfig(name="onnxruntime", device="cpu")).load(bundle)
    refs = {name: reference.run(w.mode, x).logits for name, (w, x) in inputs.items()}
    engines: dict[str, Any] = {}
    for engine in ("onnxruntime", "torch"):
        label = f"slimsplit {engine} {device}"
        try:
            runner = create_backend(BackendConfig(name=engine, device=device)).load(bundle)
        except (SlimsplitError, ImportError, RuntimeError) as exc:
            engines[label] = {"status": "unavailable", "why": str(exc)[:400]}
            continue
        engines[label] = {name: compare(refs[name], runner.run(w.mode, x).logits) for name, (w, x) in inputs.items()}
        runner.close()
    engines[f"triton python-backend {device}"] = _triton_agree(device, triton_venv, root, inputs, refs)
    return {"device": device, "reference": "slimsplit onnxruntime cpu", "inputs": len(next(iter(inputs.values()))[1]),
            "modes": modes, "engines": engines}  # fmt: skip


def _triton_agree(
    device: str,
    triton_venv: Path,
    root: Path,
    inputs: dict[str, tuple[peer.Workload, npt.NDArray[np.float32]]],
    refs: dict[str, npt.NDArray[np.float32]],
) -> dict[str, Any]:
    try:
        install = peer.find_triton(triton_venv)
    except peer.PeerError as exc:
        return {"status": "unavailable", "why": str(exc)}
    gpu = device == "cuda"
    if gpu and "CUDAExecutionProvider" not in _triton_providers(install):
        return {
            "status": "unavailable",
            "why": f"{triton_venv}'s onnxruntime has no CUDAExecutionProvider: pip install onnxruntime-gpu there",
        }
    repo = root / "models"
    write_repository(peer._bundle_path(), repo, RepoOptions(device="gpu" if gpu else "cpu"))
    server = peer.triton_server(install, repo, tuple(sorted(os.sched_getaffinity(0))), root)
    out: dict[str, Any] = {}
    try:
        server.start()
        for name, (workload, _) in inputs.items():
            answers = peer.check_answers(server, install, workload, root / name)
            out[name] = compare(refs[name], np.asarray(answers["scores"], dtype=np.float32))
    except peer.PeerError as exc:
        return {"status": "MISMATCH", "why": f"Triton failed: {exc}"}
    finally:
        server.stop()
    return out


def _verdicts(engines: dict[str, Any]) -> dict[str, str]:
    """Engine -> ok / MISMATCH / unavailable."""
    out = {}
    for engine, result in engines.items():
        if "status" in result:
            out[engine] = result["status"]
        else:
            out[engine] = "ok" if all(r["status"] == "ok" for r in result.values()) else "MISMATCH"
    return out


def report(agreement: dict[str, Any], runs: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The merged document: agreement, the peer runs by batching (``on``/``off``), and the gain of batching."""
    gains = []
    on, off = runs.get("on"), runs.get("off")
    if on and off:
        by_off = {(p["server"], p["transport"], p["in_flight"]): p for p in off["results"]}
        for p in on["results"]:
            q = by_off.get((p["server"], p["transport"], p["in_flight"]))
            if q:
                gains.append(
                    {
                        "server": p["server"],
                        "transport": p["transport"],
                        "in_flight": p["in_flight"],
                        "batching_on": p["throughput"],
                        "batching_off": q["throughput"],
                        "gain": p["throughput"] / q["throughput"] if q["throughput"] else float("nan"),
                        "p99_on_ms": p["p99_ms"],
                        "p99_off_ms": q["p99_ms"],
                        "mean_batch_on": p["mean_batch"],
                    }
                )
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "agreement": agreement,
        "verdicts": _verdicts(agreement["engines"]),
        "batching": gains,
        "peer_runs": runs,
    }


def print_report(doc: dict[str, Any]) -> None:
    print(f"\nagreement with {doc['agreement']['reference']} on {doc['agreement']['inputs']} shipped samples:")
    for engine, result in doc["agreement"]["engines"].items():
        verdict = doc["verdicts"][engine]
        if "status" in result:
            print(f"  {engine:34s} {verdict:11s} {result.get('why', '')}")
            continue
        worst = min(r.get("top1_agreement", 0.0) for r in result.values())
        diff = max(r.get("max_abs_diff", float("inf")) for r in result.values())
        print(f"  {engine:34s} {verdict:11s} top-1 >= {worst:.3f}, max |logit diff| {diff:.2e} ({len(result)} tails)")
    if doc["batching"]:
        print(f"\n{'server':10s} {'transport':9s} {'in flight':>9s} {'batching on':>12s} {'off':>9s} {'gain':>6s} "
              f"{'p99 on/off ms':>16s} {'batch':>6s}")  # fmt: skip
        for g in doc["batching"]:
            print(
                f"{g['server']:10s} {g['transport']:9s} {g['in_flight']:9d} {g['batching_on']:12.0f} "
                f"{g['batching_off']:9.0f} {g['gain']:6.2f} {g['p99_on_ms']:7.2f}/{g['p99_off_ms']:<8.2f} "
                f"{g['mean_batch_on']:6.1f}"
            )
    else:
        print("\n(no throughput runs to compare)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peer_gpu", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("agree", help="GPU tails against the CPU reference")
    a.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    a.add_argument("--triton-venv", type=Path, default=peer.TRITON_VENV)
    a.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report", help="merge the agreement and the peer runs, print the table")
    r.add_argument("agreement", type=Path)
    r.add_argument("batching_on", type=Path)
    r.add_argument("batching_off", type=Path)
    r.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.command == "agree":
        doc = agree(args.device, args.triton_venv.absolute())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        verdicts = _verdicts(doc["engines"])
        print("agreement:", ", ".join(f"{k}: {v}" for k, v in verdicts.items()))
        return 1 if "MISMATCH" in verdicts.values() else 0

    def load(path: Path) -> dict[str, Any] | None:
        return json.loads(path.read_text()) if path.is_file() else None

    agreement = load(args.agreement)
    if agreement is None:
        print(f"error: no agreement results at {args.agreement}", file=sys.stderr)
        return 1
    doc = report(agreement, {"on": load(args.batching_on), "off": load(args.batching_off)})
    print_report(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if "MISMATCH" in doc["verdicts"].values() else 0


if __name__ == "__main__":
    raise SystemExit(main())
