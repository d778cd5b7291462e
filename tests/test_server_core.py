"""The transport-neutral core: validation, decoding, batching, deadlines, overload, top-k, repositories."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest
from fixtures_bundle import TinyBundle, rewrite_header, write_tiny_bundle
from prometheus_client import CollectorRegistry
from server_helpers import GateBackend

from slimsplit.bundle import Bundle
from slimsplit.codec import DecodedFeatures, decode_features, encode_features, peek_header
from slimsplit.errors import (
    BackendError,
    BundleError,
    CodecError,
    DeadlineExceeded,
    InvalidFrame,
    Overloaded,
    SlimsplitError,
    Unavailable,
    UnknownMode,
    UnknownModel,
    UnsupportedVersion,
)
from slimsplit.server import core as core_module
from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.backends.onnxruntime_backend import OnnxRuntimeBackend
from slimsplit.server.batcher import TailLoad
from slimsplit.server.config import BatchingConfig, ServerConfig
from slimsplit.server.core import InferenceCore, InferRequest, top_k
from slimsplit.server.metrics import ServerMetrics
from slimsplit.server.repository import discover, discover_all, version_key

T = TypeVar("T")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def make_core(tiny: TinyBundle, backend: Backend | None = None, **batching: Any) -> InferenceCore:
    config = ServerConfig(models=(tiny.root,), batching=BatchingConfig(**batching))
    return InferenceCore.from_config(config, backend=backend, metrics=ServerMetrics(CollectorRegistry()))


def run(core: InferenceCore, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` on a fresh event loop, then close the core on that loop."""

    async def main() -> T:
        try:
            return await fn()
        finally:
            await core.aclose()

    return asyncio.run(main())


def req(tiny: TinyBundle, mode: str, seed: int = 0, **kw: Any) -> InferRequest:
    return InferRequest(model=tiny.manifest.name, mode=mode, features=tiny.frame(mode, seed), **kw)


# ----------------------------------------------------------------------------------------------- predictions


def test_predictions_match_the_reference_tail_for_every_mode(tiny: TinyBundle) -> None:
    core = make_core(tiny)

    async def go() -> None:
        for mode in tiny.manifest.mode_names:
            for seed in range(3):
                r = req(tiny, mode, seed, frame_id=100 + seed, top_k=3)
                res = await core.infer(r)
                ref = tiny.reference_logits(mode, r.features)
                np.testing.assert_allclose(res.logits, ref, rtol=1e-5, atol=1e-5)
                assert res.classes == tuple(int(i) for i in np.argsort(-ref, kind="stable")[:3])
                assert res.frame_id == 100 + seed
                assert (res.model, res.model_version, res.mode) == ("tiny", "1", mode)
                assert res.labels == tuple(f"class{i}" for i in res.classes)
                assert len(res.scores) == 3 and res.scores[0] >= res.scores[1] >= res.scores[2] > 0
                assert res.timing.backend == "onnxruntime" and res.timing.batch_size == 1
                assert res.timing.total_ms >= res.timing.decode_ms >= 0

    run(core, go)


class _SlowCpuBackend(Backend):
    """ONNX Runtime tails that also burn ``delay_s`` on the CPU; marked safe to run on the event loop."""

    name = "slow-cpu"

    def __init__(self, delay_s: float) -> None:
        self.inner = OnnxRuntimeBackend()
        self.delay_s = delay_s

    def load(self, bundle: Bundle) -> TailRunner:
        inner = self.inner.load(bundle)
        delay_s = self.delay_s

        class Runner(TailRunner):
            inline_safe = True

            def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
                time.sleep(delay_s)
                return inner.run(mode, features)

        return Runner()

    def describe(self) -> dict[str, str]:
        return {"backend": self.name}


def test_cheap_idle_tail_runs_inline_with_the_same_answer(tiny: TinyBundle) -> None:
    core = make_core(tiny)

    async def go() -> None:
        first = core.start(req(tiny, "w2b8", 0))
        assert not first.done()  # no tail time measured yet: the first frame goes through the executor
        await first
        r = req(tiny, "w2b8", 1)
        fut = core.start(r)
        assert fut.done()  # idle mode, cheap CPU tail: served before start() returned
        res = fut.result()
        np.testing.assert_allclose(res.logits, tiny.reference_logits("w2b8", r.features), rtol=1e-5, atol=1e-5)
        assert res.timing.queue_ms == 0 and res.timing.batch_size == 1 and res.timing.tail_ms > 0
        assert core.in_flight == 0
        # Errors come through the future, and the frame still leaves the core.
        bad = core.start(replace(r, mode="bogus"))
        assert bad.done() and isinstance(bad.exception(), UnknownMode)
        assert core.in_flight == 0

    run(core, go)


@pytest.mark.parametrize(
    ("backend", "batching"),
    [
        (GateBackend, {}),  # not inline-safe (may block): always the executor
        (lambda: _SlowCpuBackend(0.004), {"inline_tail_max_us": 1000}),  # safe but slower than the limit
        (OnnxRuntimeBackend, {"inline_tail_max_us": 0}),  # the fast path switched off
        (OnnxRuntimeBackend, {"inline_max_load": 0.0}),  # any tail load counts as busy: tails go beside the loop
    ],
    ids=["not-inline-safe", "too-slow", "disabled", "server-busy"],
)
def test_tails_that_must_not_run_inline_use_the_executor(
    tiny: TinyBundle, backend: Callable[[], Backend], batching: dict[str, Any]
) -> None:
    core = make_core(tiny, backend(), **batching)

    async def go() -> None:
        for seed in range(4):
            r = req(tiny, "w4b8", seed)
            fut = core.start(r)
            assert not fut.done()
            res = await fut
            np.testing.assert_allclose(res.logits, tiny.reference_logits("w4b8", r.features), rtol=1e-5, atol=1e-5)

    run(core, go)


def test_tail_load_is_a_decaying_share_of_wall_time() -> None:
    load = TailLoad(tau_s=0.05)
    assert load.utilization(0.0) == 0.0
    load.add(0.01, now=1.0)  # 10 ms of tail work just now: 20% of a 50 ms window
    assert load.utilization(1.0) == pytest.approx(0.2)
    assert load.utilization(1.05) == pytest.approx(0.2 * np.exp(-1.0))
    load.add(0.01, now=1.05)
    assert load.utilization(1.05) == pytest.approx(0.2 * np.exp(-1.0) + 0.2)
    assert load.utilization(2.0) < 1e-6  # an idle server forgets


def test_a_busy_mode_queues_behind_its_running_batch(tiny: TinyBundle) -> None:
    gate = GateBackend()
    core = make_core(tiny, gate)

    async def go() -> None:
        await core.infer(req(tiny, "w2b2", 0))
        gate.gate.clear()
        first = core.start(req(tiny, "w2b2", 1))
        while gate.waiting < 1:
            await asyncio.sleep(0.005)
        second = core.start(req(tiny, "w2b2", 2))
        assert not first.done() and not second.done()
        gate.gate.set()
        await asyncio.gather(first, second)

    run(core, go)


def test_top_k_default_and_clamp(tiny: TinyBundle) -> None:
    core = make_core(tiny)

    async def go() -> None:
        assert len((await core.infer(req(tiny, "w2b8"))).classes) == 5  # the server default
        assert len((await core.infer(req(tiny, "w2b8", top_k=99))).classes) == 10  # no more than the classes

    run(core, go)


def test_top_k_softmax() -> None:
    classes, scores = top_k(np.array([0.0, 2.0, 1.0, 2.0], dtype=np.float32), 3)
    assert classes == (1, 3, 2)  # ties: lower index first
    e = np.exp([0.0, 2.0, 1.0, 2.0])
    np.testing.assert_allclose(scores, (e / e.sum())[[1, 3, 2]])


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("unknown model", UnknownModel),
        ("unknown version", UnknownModel),
        ("unknown mode", UnknownMode),
        ("wrong protocol version", UnsupportedVersion),
        ("unset protocol version", UnsupportedVersion),
        ("header lies about bits", InvalidFrame),
        ("header lies about channels", InvalidFrame),
        ("header lies about height", CodecError),
        ("frame of another mode", InvalidFrame),
        ("truncated payload", CodecError),
        ("trailing bytes", CodecError),
        ("garbage", CodecError),
        ("empty", CodecError),
        ("NaN lo", CodecError),
        ("Inf hi", CodecError),
        ("newer codec version", UnsupportedVersion),
    ],
)
def test_bad_frames_raise_the_right_error(tiny: TinyBundle, case: str, error: type[SlimsplitError]) -> None:
    good = req(tiny, "w4b8")
    f = good.features
    request = {
        "unknown model": replace(good, model="nope"),
        "unknown version": replace(good, model_version="7"),
        "unknown mode": replace(good, mode="w3b3"),
        "wrong protocol version": replace(good, protocol_version=2),
        "unset protocol version": replace(good, protocol_version=0),
        "header lies about bits": replace(good, features=rewrite_header(f, coder_bits=(f[1] & 0xF0) | 3)),
        "header lies about channels": replace(good, features=rewrite_header(f, c=2)),
        "header lies about height": replace(good, features=rewrite_header(f, h=5)),
        "frame of another mode": replace(good, features=tiny.frame("w2b8")),
        "truncated payload": replace(good, features=f[:-3]),
        "trailing bytes": replace(good, features=f + b"\0"),
        "garbage": replace(good, features=bytes(range(256)) * 2),
        "empty": replace(good, features=b""),
        "NaN lo": replace(good, features=rewrite_header(f, lo=float("nan"))),
        "Inf hi": replace(good, features=rewrite_header(f, hi=float("inf"))),
        "newer codec version": replace(good, features=bytes([0xA3]) + f[1:]),
    }[case]
    core = make_core(tiny)

    async def go() -> None:
        with pytest.raises(error) as info:
            await core.infer(request)
        assert str(info.value)  # a message that names the problem
        # The core keeps serving after a bad frame.
        assert (await core.infer(good)).classes

    run(core, go)
    samples = {
        (s.labels.get("model"), s.labels.get("status"))
        for metric in core.metrics.registry.collect()  # type: ignore[union-attr]
        if metric.name == "slimsplit_frames"
        for s in metric.samples
        if s.name == "slimsplit_frames_total" and s.value > 0
    }
    status = error.grpc_status
    expected_model = "tiny" if error not in (UnknownModel,) else "_unknown"
    if case == "unknown version":
        expected_model = "tiny"
    assert (expected_model, status) in samples
    assert ("tiny", "OK") in samples


def test_messages_name_the_offending_field(tiny: TinyBundle) -> None:
    core = make_core(tiny)
    good = req(tiny, "w4b8")

    async def go() -> None:
        with pytest.raises(InvalidFrame, match=r"says 8 bits but mode w4b2 uses 2"):
            await core.infer(replace(good, mode="w4b2"))
        with pytest.raises(InvalidFrame, match=r"shape \[2, 4, 4\] but mode w4b8 sends \[4, 4, 4\]"):
            await core.infer(replace(good, features=tiny.frame("w2b8")))
        with pytest.raises(CodecError, match="payload_len"):
            await core.infer(replace(good, features=rewrite_header(good.features, c=2)))
        with pytest.raises(UnknownMode, match="w2b2, w2b8, w4b2, w4b8"):
            await core.infer(replace(good, mode="bogus"))
        with pytest.raises(UnknownModel, match="loaded: tiny"):
            await core.infer(replace(good, model="bogus"))

    run(core, go)


def test_non_finite_decoded_values_are_refused(tiny: TinyBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """The codec cannot produce NaN from a valid header; the core checks anyway (defence in depth)."""
    good = req(tiny, "w2b8")

    def poisoned(data: bytes, limits: Any = None, *, tables: Any = None) -> DecodedFeatures:
        d = decode_features(data, limits, tables=tables)
        arr = d.array.copy()
        arr[0, 0, 0] = np.nan
        return DecodedFeatures(array=arr, header=d.header)

    monkeypatch.setattr(core_module, "decode_features", poisoned)
    core = make_core(tiny)

    async def go() -> None:
        with pytest.raises(InvalidFrame, match="NaN or infinite"):
            await core.infer(good)

    run(core, go)


# ----------------------------------------------------------------------------------------------- batching


def test_frames_of_one_mode_are_batched_and_answered_individually(tiny: TinyBundle) -> None:
    gate = GateBackend(open_=False)
    core = make_core(tiny, gate, max_batch_size=4)

    async def go() -> None:
        requests = [req(tiny, "w4b2", seed, frame_id=seed) for seed in range(9)]
        tasks = [asyncio.create_task(core.infer(r)) for r in requests]
        while gate.waiting < 1:  # the first batch is in the tail; the others queue behind it
            await asyncio.sleep(0.005)
        gate.gate.set()
        results = await asyncio.gather(*tasks)
        for r, res in zip(requests, results, strict=True):
            assert res.frame_id == r.frame_id
            np.testing.assert_allclose(res.logits, tiny.reference_logits("w4b2", r.features), rtol=1e-5, atol=1e-5)
        assert gate.batch_sizes == [4, 4, 1]  # all 9 were queued before the worker ran
        assert sorted(res.timing.batch_size for res in results) == [1] + [4] * 8

    run(core, go)


def test_max_wait_gathers_a_batch(tiny: TinyBundle) -> None:
    gate = GateBackend()
    core = make_core(tiny, gate, max_batch_size=8, max_wait_us=500_000)

    async def go() -> None:
        results = await asyncio.gather(*(core.infer(req(tiny, "w2b2", s)) for s in range(5)))
        assert gate.batch_sizes == [5]
        assert all(r.timing.batch_size == 5 for r in results)

    run(core, go)


def test_full_queue_is_overloaded(tiny: TinyBundle) -> None:
    gate = GateBackend(open_=False)
    core = make_core(tiny, gate, max_batch_size=1, queue_capacity=2)

    async def go() -> None:
        first = asyncio.create_task(core.infer(req(tiny, "w2b8")))
        while gate.waiting < 1:
            await asyncio.sleep(0.005)
        queued = [asyncio.create_task(core.infer(req(tiny, "w2b8", s))) for s in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="2 frames are already waiting"):
            await core.infer(req(tiny, "w2b8", 3))
        # Another mode has its own queue.
        other = asyncio.create_task(core.infer(req(tiny, "w4b8")))
        gate.gate.set()
        await asyncio.gather(first, *queued, other)

    run(core, go)


def test_deadline_expired_in_the_queue_is_not_run(tiny: TinyBundle) -> None:
    gate = GateBackend(open_=False)
    core = make_core(tiny, gate, max_batch_size=1)

    async def go() -> None:
        first = asyncio.create_task(core.infer(req(tiny, "w2b8")))
        while gate.waiting < 1:
            await asyncio.sleep(0.005)
        with pytest.raises(DeadlineExceeded):
            await core.infer(req(tiny, "w2b8", 1), timeout=0.05)
        gate.gate.set()
        await first
        assert gate.batch_sizes == [1]  # the expired frame never reached the tail
        assert core.in_flight == 0

    run(core, go)


def test_backend_failure_reaches_every_frame_of_the_batch(tiny: TinyBundle) -> None:
    gate = GateBackend()
    gate.fail_with = BackendError("device fell off the bus")
    core = make_core(tiny, gate)

    async def go() -> None:
        outcomes = await asyncio.gather(*(core.infer(req(tiny, "w2b8", s)) for s in range(3)), return_exceptions=True)
        assert all(isinstance(o, BackendError) for o in outcomes)
        gate.fail_with = None
        assert (await core.infer(req(tiny, "w2b8"))).classes

    run(core, go)


def test_drain_answers_queued_frames_then_refuses(tiny: TinyBundle) -> None:
    gate = GateBackend(open_=False)
    core = make_core(tiny, gate, max_batch_size=2)

    async def go() -> None:
        tasks = [asyncio.create_task(core.infer(req(tiny, "w2b8", s))) for s in range(5)]
        while gate.waiting < 1:
            await asyncio.sleep(0.005)
        drain = asyncio.create_task(core.drain())
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable):
            await core.infer(req(tiny, "w2b8"))
        assert not drain.done()
        gate.gate.set()
        await drain
        assert all(t.done() and t.exception() is None for t in tasks)

    run(core, go)


def test_cancelled_callers_do_not_leak(tiny: TinyBundle) -> None:
    gate = GateBackend(open_=False)
    core = make_core(tiny, gate, max_batch_size=1)

    async def go() -> None:
        tasks = [asyncio.create_task(core.infer(req(tiny, "w2b8", s))) for s in range(4)]
        while gate.waiting < 1:
            await asyncio.sleep(0.005)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert core.in_flight == 0
        gate.gate.set()
        assert (await core.infer(req(tiny, "w2b8"))).classes
        assert sum(gate.batch_sizes) <= 2  # cancelled queued frames were dropped, not run

    run(core, go)


def test_describe(tiny: TinyBundle) -> None:
    core = make_core(tiny)
    assert [m.name for m in core.describe()] == ["tiny"]
    assert core.describe("tiny")[0].mode_names == tiny.manifest.mode_names
    with pytest.raises(UnknownModel):
        core.describe("nope")
    asyncio.run(core.aclose())


# ----------------------------------------------------------------------------------------------- repository


def test_repository_layouts_and_newest_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_tiny_bundle(repo / "tiny" / "2", version="2")
    write_tiny_bundle(repo / "tiny" / "10", version="10", seed=1)
    write_tiny_bundle(repo / "other" / "1", name="other")
    bundles = discover(repo)
    assert sorted((b.manifest.name, b.manifest.version) for b in bundles) == [
        ("other", "1"),
        ("tiny", "10"),
        ("tiny", "2"),
    ]
    flat = tmp_path / "flat"
    write_tiny_bundle(flat / "a", name="a")
    write_tiny_bundle(flat / "b", name="b")
    assert sorted(b.manifest.name for b in discover(flat)) == ["a", "b"]
    assert [b.manifest.name for b in discover(flat / "a")] == ["a"]

    core = InferenceCore.from_config(ServerConfig(models=(repo,)))
    assert core.model("tiny").manifest.version == "10"  # numeric, not lexicographic
    assert core.model("tiny", "2").manifest.version == "2"
    asyncio.run(core.aclose())
    assert version_key("1.2.10") > version_key("1.2.9")


def test_repository_errors(tmp_path: Path) -> None:
    write_tiny_bundle(tmp_path / "repo" / "tiny" / "3", version="1")
    with pytest.raises(BundleError, match="rename the folders to tiny/1"):
        discover(tmp_path / "repo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no bundle found"):
        discover(tmp_path / "empty")
    with pytest.raises(BundleError, match="does not exist"):
        discover(tmp_path / "missing")
    write_tiny_bundle(tmp_path / "x" / "tiny")
    write_tiny_bundle(tmp_path / "y" / "tiny")
    with pytest.raises(BundleError, match="is in both"):
        discover_all([tmp_path / "x", tmp_path / "y"])


# ----------------------------------------------------------------------------------------------- backends


def test_onnx_backend_refuses_a_tail_that_disagrees_with_the_manifest(tmp_path: Path) -> None:
    from fixtures_bundle import _save, tail_graph

    tiny = write_tiny_bundle(tmp_path / "b")
    w = np.zeros((2 * 5 * 4, 10), dtype=np.float32)
    b = np.zeros(10, dtype=np.float32)
    _save(tail_graph(2, w, b, height=5), tiny.root / "tails" / "w2.onnx")  # features of the wrong height
    with pytest.raises(BundleError, match=r"w2\.onnx.*\[N, 2, 4, 4\]"):
        OnnxRuntimeBackend().load(Bundle.open(tiny.root))


def test_onnx_backend_runs_fixed_batch_tails_frame_by_frame(tmp_path: Path) -> None:
    from fixtures_bundle import _save, tail_graph

    tiny = write_tiny_bundle(tmp_path / "b")
    w, b = tiny.weights[4]
    _save(tail_graph(4, w, b, batch=1), tiny.root / "tails" / "w4.onnx")
    runner = OnnxRuntimeBackend().load(Bundle.open(tiny.root))
    x = np.stack([tiny.features("w4b8", s) for s in range(3)])
    np.testing.assert_allclose(runner.run("w4b8", x).logits, x.reshape(3, -1) @ w + b, rtol=1e-5, atol=1e-5)
    with pytest.raises(UnknownMode):
        runner.run("w9b9", x)


def test_onnx_backend_refuses_unreadable_tail(tmp_path: Path) -> None:
    tiny = write_tiny_bundle(tmp_path / "b")
    (tiny.root / "tails" / "w4.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match=r"w4\.onnx"):
        OnnxRuntimeBackend().load(Bundle.open(tiny.root))


def test_backend_registry() -> None:
    from slimsplit.errors import ConfigError
    from slimsplit.server.backends import backend_names, create_backend
    from slimsplit.server.config import BackendConfig

    assert {"onnxruntime", "torch", "null", "fpga-emu", "fpga"} <= set(backend_names())
    assert create_backend(BackendConfig(name="null")).name == "null"
    assert create_backend(BackendConfig(name="onnxruntime", device="cpu")).describe()["providers"] == (
        "CPUExecutionProvider"
    )
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        create_backend(BackendConfig(name="tpu"))


def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    from slimsplit.server.backends.onnxruntime_backend import choose_providers

    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        choose_providers("cuda", ["CPUExecutionProvider"])


def test_null_backend_serves_uniform_scores(tiny: TinyBundle) -> None:
    from slimsplit.server.backends.null_backend import NullBackend

    core = make_core(tiny, NullBackend())

    async def go() -> None:
        res = await core.infer(req(tiny, "w4b8", top_k=3))
        assert res.classes == (0, 1, 2)
        np.testing.assert_allclose(res.scores, [0.1] * 3, rtol=1e-6)

    run(core, go)


def test_fixture_bundle_is_copyable(tiny: TinyBundle, tmp_path: Path) -> None:
    """The fixture is a self-contained folder (tests copy it into repositories)."""
    dst = tmp_path / "copy"
    shutil.copytree(tiny.root, dst)
    assert Bundle.open(dst).manifest == tiny.manifest
    frame = encode_features(tiny.features("w2b2"), 2)
    assert len(frame) > peek_header(frame).header_len
