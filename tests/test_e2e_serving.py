"""End to end over a real gRPC server on 127.0.0.1 with the ONNX Runtime backend and the shipped bundle.

The edge's predictions over ``InferStream`` and over ``Infer`` must equal the in-process split model's:
EncoderRuntime -> codec encode -> codec decode -> ONNX Runtime tail, with no gRPC in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from slimsplit.apps.demo import demo_modes
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import decode_features, encode_features
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import FixedOptions
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig
from slimsplit.edge.pipeline import PipelineConfig, RunReport, run_frames
from slimsplit.edge.run import bundle_controller
from slimsplit.edge.runtime import EncoderRuntime
from slimsplit.edge.sources import SourceFrame, load_sample
from slimsplit.server.app import ServerThread
from slimsplit.server.config import GrpcConfig, ServerConfig

FRAMES = 12
# Tails run in batches on the server and one by one here; float sums in another order may flip a top-1 only
# where the two best logits are this close (an untrained bundle can have such near-ties).
TIE = 1e-4


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(default_bundle_path())


@pytest.fixture(scope="module")
def server(bundle: Bundle) -> Iterator[ServerThread]:
    config = ServerConfig(models=(bundle.root,), grpc=GrpcConfig(port=0, grace_s=0.5), log_level="warning")
    srv = ServerThread(config).start()
    try:
        yield srv
    finally:
        srv.stop(grace=0.5)


@pytest.fixture(scope="module")
def frames(bundle: Bundle) -> list[SourceFrame]:
    return list(load_sample(bundle.manifest.input).take(FRAMES))


@dataclass(frozen=True)
class Reference:
    payload_bytes: int
    probs: npt.NDArray[np.float32]


def _softmax(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    e = np.exp(x - x.max())
    out: npt.NDArray[np.float32] = e / e.sum()
    return out


def in_process(bundle: Bundle, mode: str, frames: list[SourceFrame]) -> list[Reference]:
    """The split model without the network: encoder -> codec -> decode -> ONNX Runtime tail."""
    runtime = EncoderRuntime(bundle)
    runtime.set_mode(mode)
    spec = bundle.manifest.mode(mode)
    tail = ort.InferenceSession(str(bundle.tail_path(spec)), providers=["CPUExecutionProvider"])
    name = tail.get_inputs()[0].name
    refs = []
    for f in frames:
        tables = runtime.codec_tables(mode)  # the bundle's learned code for the mode, as the edge uses it
        payload = encode_features(runtime.features(f.image), spec.bits, tables=tables)
        x = decode_features(payload, tables=tables).array[None].astype(np.float32)
        logits: Any = tail.run(None, {name: x})[0][0]
        refs.append(Reference(len(payload), _softmax(np.asarray(logits, np.float32))))
    return refs


def run_edge(server: ServerThread, bundle: Bundle, mode: str, frames: list[SourceFrame], unary: bool) -> RunReport:
    async def go() -> RunReport:
        config = ClientConfig(target=server.address, max_in_flight=4, deadline_ms=10_000)
        async with EdgeClient(config) as client:
            await client.wait_ready()
            run = RunConfig(deadline_ms=config.deadline_ms, max_in_flight=config.max_in_flight)
            controller, table = bundle_controller("fixed", bundle.manifest, run, FixedOptions(mode))
            return await run_frames(
                client,
                EncoderRuntime(bundle),
                controller,
                table,
                frames,
                PipelineConfig(model=bundle.manifest.name, model_version=bundle.manifest.version, unary=unary),
            )

    return asyncio.run(go())


def assert_same_predictions(report: RunReport, refs: list[Reference], mode: str) -> None:
    assert len(report.results) == len(refs)
    for r, ref in zip(report.results, refs, strict=True):
        assert r.ok, f"frame {r.index}: {r.status} {r.error}"
        assert r.mode == mode
        assert r.payload_bytes == ref.payload_bytes  # the very same encoding went over the wire
        best = int(np.argmax(ref.probs))
        tied = {int(i) for i in np.flatnonzero(ref.probs >= ref.probs[best] - TIE)}
        assert r.top1 in tied, f"frame {r.index}: server top-1 {r.top1}, in-process {best}"
        if len(tied) == 1:
            assert r.top1 == best
        assert r.scores[0] == pytest.approx(float(ref.probs[r.top1]), abs=1e-4)
        assert r.server is not None and r.server.total_ms > 0
        assert r.transfer_ms == pytest.approx(r.rtt_ms - r.server.total_ms)


@pytest.fixture(scope="module")
def modes(bundle: Bundle) -> tuple[str, ...]:
    chosen = demo_modes(bundle.manifest, 3)
    assert len(chosen) == 3
    return chosen


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("unary", [False, True], ids=["stream", "unary"])
def test_predictions_equal_the_in_process_split_model(
    server: ServerThread,
    bundle: Bundle,
    frames: list[SourceFrame],
    modes: tuple[str, ...],
    which: int,
    unary: bool,
) -> None:
    mode = modes[which]
    report = run_edge(server, bundle, mode, frames, unary)
    assert_same_predictions(report, in_process(bundle, mode, frames), mode)
    assert report.reconnects == 0


def test_labels_and_class_names_come_back(server: ServerThread, bundle: Bundle, frames: list[SourceFrame]) -> None:
    mode = bundle.manifest.modes[-1].name
    report = run_edge(server, bundle, mode, frames[:3], unary=False)
    classes = bundle.manifest.classes
    for r in report.results:
        assert r.label == frames[r.index].label
        assert r.top1 is not None and r.top1_name == classes[r.top1]
        assert len(r.classes) == 5 and list(r.scores) == sorted(r.scores, reverse=True)
