"""The edge pipeline against an inference core in the same process (``slimsplit.apps.inprocess``): with real ONNX
sessions on both sides, the predictions, errors and Describe answers are those of a gRPC server on loopback."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest
from control_helpers import FixedMode

from slimsplit import errors
from slimsplit.apps.inprocess import InProcessConnection, connector
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.control.modes import modes_from_manifest
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig
from slimsplit.edge.display import QuietDisplay
from slimsplit.edge.pipeline import PipelineConfig, RunReport, run_frames
from slimsplit.edge.run import EdgeRun, run_edge
from slimsplit.edge.runtime import EncoderRuntime
from slimsplit.edge.sources import SourceFrame, load_sample
from slimsplit.edge.transport import Connection, Outcome
from slimsplit.server.app import ServerThread
from slimsplit.server.config import GrpcConfig, ServerConfig
from slimsplit.server.core import InferenceCore

FRAMES = 8
CLIENT = ClientConfig(max_in_flight=1, deadline_ms=10_000)
T = TypeVar("T")


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(default_bundle_path())


@pytest.fixture(scope="module")
def config(bundle: Bundle) -> ServerConfig:
    return ServerConfig(models=(bundle.root,), grpc=GrpcConfig(port=0, grace_s=0.5), log_level="warning")


@pytest.fixture(scope="module")
def server(config: ServerConfig) -> Iterator[ServerThread]:
    srv = ServerThread(config).start()
    try:
        yield srv
    finally:
        srv.stop(grace=0.5)


@pytest.fixture(scope="module")
def frames(bundle: Bundle) -> list[SourceFrame]:
    return list(load_sample(bundle.manifest.input).take(FRAMES))


async def using(connect: Callable[[], Connection], use: Callable[[Connection], Awaitable[T]]) -> T:
    """``use`` an open connection; an in-process one's core is closed after (on the loop it ran on)."""
    connection = connect()
    try:
        async with connection as client:
            return await use(client)
    finally:
        if isinstance(connection, InProcessConnection):
            await connection.core.aclose()


def in_process(config: ServerConfig) -> Callable[[], Connection]:
    return lambda: InProcessConnection(InferenceCore.from_config(config), CLIENT)


def over_grpc(server: ServerThread) -> Callable[[], Connection]:
    return lambda: EdgeClient(replace(CLIENT, target=server.address))


def pipeline(connect: Callable[[], Connection], bundle: Bundle, mode: str, frames: list[SourceFrame]) -> RunReport:
    """One frame in flight at a time (batches of one on both sides: the same arithmetic)."""

    async def run(client: Connection) -> RunReport:
        await client.wait_ready()
        return await run_frames(
            client,
            EncoderRuntime(bundle),
            FixedMode(mode),
            modes_from_manifest(bundle.manifest),
            frames,
            PipelineConfig(model=bundle.manifest.name, model_version=bundle.manifest.version),
        )

    return asyncio.run(using(connect, run))


@pytest.mark.parametrize("which", [0, -1])
def test_the_pipeline_in_process_predicts_what_it_predicts_over_grpc(
    server: ServerThread, config: ServerConfig, bundle: Bundle, frames: list[SourceFrame], which: int
) -> None:
    mode = bundle.manifest.modes[which].name
    there = pipeline(over_grpc(server), bundle, mode, frames)
    here = pipeline(in_process(config), bundle, mode, frames)
    assert [r.status for r in here.results] == ["OK"] * FRAMES
    assert [r.status for r in there.results] == ["OK"] * FRAMES
    for a, b in zip(here.results, there.results, strict=True):
        assert (a.index, a.mode, a.payload_bytes) == (b.index, b.mode, b.payload_bytes)
        assert a.classes == b.classes and a.class_names == b.class_names
        assert a.scores == pytest.approx(b.scores, abs=1e-6)
        assert a.server is not None and a.server.total_ms > 0 and a.server.batch_size == 1
    assert here.reconnects == 0 and here.late_replies == 0


def test_errors_in_process_are_the_errors_over_grpc(server: ServerThread, config: ServerConfig, bundle: Bundle) -> None:
    m = bundle.manifest

    async def outcomes(client: Connection) -> tuple[list[Outcome], list[str]]:
        transport = client.open_transport()
        got: list[Outcome] = []
        frames = [
            client.make_frame(mode="w999b3", payload=b"\xa2", model=m.name),
            client.make_frame(mode=m.modes[0].name, payload=b"\xa2", model="no-such-model"),
            client.make_frame(mode=m.modes[0].name, payload=b"garbage", model=m.name),
        ]
        frames[-1].protocol_version = 99
        frames.append(client.make_frame(mode=m.modes[0].name, payload=b"garbage", model=m.name))
        for f in frames:
            await transport.submit(f, 5.0, got.append)
        assert await transport.drain(5.0)
        await transport.aclose()
        with pytest.raises(errors.UnknownModel) as unknown:
            await client.describe("no-such-model")
        described = await client.describe()
        got.sort(key=lambda o: o.frame_id)
        return got, [str(unknown.value), described.models[0].manifest_json]

    here, here_describe = asyncio.run(using(in_process(config), outcomes))
    there, there_describe = asyncio.run(using(over_grpc(server), outcomes))
    names = [type(o.error).__name__ for o in here]
    assert names == ["UnknownMode", "UnknownModel", "UnsupportedVersion", "CodecError"]
    assert names == [type(o.error).__name__ for o in there]
    assert [(o.status, o.message) for o in here] == [(o.status, o.message) for o in there]
    assert [o.attempt for o in here] == [1] * 4
    assert here_describe == there_describe


def test_an_edge_run_goes_through_the_in_process_connection(
    config: ServerConfig, bundle: Bundle, frames: list[SourceFrame]
) -> None:
    core = InferenceCore.from_config(config)
    mode = bundle.manifest.modes[-1].name
    run = EdgeRun(
        manifest=bundle.manifest,
        encoder=EncoderRuntime(bundle),
        controller=FixedMode(mode),
        mode_table=modes_from_manifest(bundle.manifest),
        frames=frames,
        target="127.0.0.1:1",  # never dialled
        client=ClientConfig(max_in_flight=2, deadline_ms=10_000),
        modes=(mode,),
        connect=connector(core),
    )

    async def go() -> RunReport:
        try:
            report, _summary = await run_edge(run, QuietDisplay(io.StringIO()))
        finally:
            await core.aclose()
        return report

    report = asyncio.run(go())
    assert [r.status for r in report.results] == ["OK"] * FRAMES
    assert report.rtt_ms is not None and report.rtt_ms >= 0
