"""The edge against a hostile server: a real ``grpc.aio`` server on 127.0.0.1 that implements
``slimsplit.v1.SplitInference`` and answers every frame with one kind of bad reply (issue 15, item 8).

Each bad reply must be a counted error of its frame (a record with a status and a reason), never a crash, never an
answer, never a steer (the controller observes no successful frame), and never printed raw; the ``--json-out``
file is always written, and a reply of megabytes is refused by the channel before it is parsed (RSS stays bounded).

Run as a script (``python tests/test_edge_hostile_server.py CASE``) it serves one case in its own process, prints
its port and serves until its stdin closes (the RSS test measures the edge alone that way).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt
import pytest

from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.control.base import Controller, Decision, FrameFeedback
from slimsplit.edge import status
from slimsplit.edge.cli import main as edge_main
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig, ReconnectPolicy
from slimsplit.edge.display import LineDisplay, format_frame
from slimsplit.edge.pipeline import PipelineConfig, RunReport, run_frames
from slimsplit.edge.replies import (
    INVALID_REPLY,
    MAX_LABEL_CHARS,
    check_prediction,
    check_timing,
    printable,
    reply_bytes_bound,
)
from slimsplit.edge.run import mode_options, write_json
from slimsplit.edge.sources import SourceFrame
from slimsplit.protocol import PROTOCOL_VERSION
from slimsplit.records import FrameRecord, summarize
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

ESC = "\x1b"
HUGE_LABEL_BYTES = 5 * 1024 * 1024
#: a reply over the size bound ends its stream (RESOURCE_EXHAUSTED for the frames in flight); a frame encoded while
#: that happened may fail with the stream still reconnecting (UNAVAILABLE), and gRPC sometimes reports the reset
#: stream as INTERNAL: each is a counted error with its reason
BROKEN_STREAM = {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL"}


def allowed(expected: str) -> set[str]:
    return BROKEN_STREAM if expected == "RESOURCE_EXHAUSTED" else {expected}


# ------------------------------------------------------------------------------------------------ the bad replies

Reply = Callable[[pb.FeatureFrame, tuple[str, ...]], list[pb.StreamReply]]


def good(frame: pb.FeatureFrame, names: tuple[str, ...]) -> pb.Prediction:
    """A reply that follows every rule (the cases below break one each)."""
    return pb.Prediction(
        frame_id=frame.frame_id,
        classes=[1, 0],
        scores=[0.7, 0.2],
        labels=[names[1], names[0]],
        timing=pb.ServerTiming(queue_ms=0.01, decode_ms=0.01, tail_ms=0.01, total_ms=0.05, backend="hostile"),
        model=frame.model,
        model_version=frame.model_version,
        mode=frame.mode,
    )


def _bad(**change: Any) -> Reply:
    """A reply of :func:`good` with ``change`` (``timing_<field>`` sets a timing field)."""

    def reply(frame: pb.FeatureFrame, names: tuple[str, ...]) -> list[pb.StreamReply]:
        p = good(frame, names)
        for key, value in change.items():
            if key.startswith("timing_"):
                setattr(p.timing, key.removeprefix("timing_"), value)
            elif isinstance(value, list):
                p.ClearField(key)
                getattr(p, key).extend(value)
            else:
                setattr(p, key, value)
        return [pb.StreamReply(prediction=p)]

    return reply


def _error(**fields: Any) -> Reply:
    def reply(frame: pb.FeatureFrame, names: tuple[str, ...]) -> list[pb.StreamReply]:
        return [pb.StreamReply(error=pb.FrameError(frame_id=frame.frame_id, **fields))]

    return reply


def _huge_labels(frame: pb.FeatureFrame, names: tuple[str, ...]) -> list[pb.StreamReply]:
    p = good(frame, names)
    p.ClearField("labels")
    p.labels.extend(["x" * HUGE_LABEL_BYTES, "y" * HUGE_LABEL_BYTES])
    return [pb.StreamReply(prediction=p)]


def _stray(frame: pb.FeatureFrame, names: tuple[str, ...]) -> list[pb.StreamReply]:
    p = good(frame, names)
    p.frame_id = frame.frame_id + 1_000_000  # a frame never sent; the real one gets no reply
    return [pb.StreamReply(prediction=p)]


def _twice(frame: pb.FeatureFrame, names: tuple[str, ...]) -> list[pb.StreamReply]:
    return [pb.StreamReply(prediction=good(frame, names))] * 2


#: case -> (the replies to each frame, the status every frame must end with)
CASES: dict[str, tuple[Reply, str]] = {
    "nan-score": (_bad(scores=[math.nan, 0.2]), INVALID_REPLY),
    "inf-score": (_bad(scores=[math.inf, 0.2]), INVALID_REPLY),
    "score-above-one": (_bad(scores=[7.0, 0.2]), INVALID_REPLY),
    "negative-score": (_bad(scores=[0.7, -0.5]), INVALID_REPLY),
    "scores-missing": (_bad(scores=[0.7]), INVALID_REPLY),
    "nan-timing": (_bad(timing_total_ms=math.nan), INVALID_REPLY),
    "inf-timing": (_bad(timing_tail_ms=math.inf), INVALID_REPLY),
    "negative-timing": (_bad(timing_total_ms=-1e30), INVALID_REPLY),
    "absurd-timing": (_bad(timing_total_ms=1e30), INVALID_REPLY),
    "timing-over-bound": (_bad(timing_queue_ms=2e6), INVALID_REPLY),
    "timing-longer-than-the-round-trip": (_bad(timing_total_ms=5e5), INVALID_REPLY),
    "long-label": (_bad(labels=["a" * (MAX_LABEL_CHARS + 1), "b"]), INVALID_REPLY),
    "escape-in-label": (_bad(labels=[f"cat{ESC}[31m{ESC}]0;pwned\x07", "b"]), INVALID_REPLY),
    "label-not-the-bundles": (_bad(labels=["not a class", "other"]), INVALID_REPLY),
    "labels-missing": (_bad(labels=["one"]), INVALID_REPLY),
    "no-classes": (_bad(classes=[], scores=[], labels=[]), INVALID_REPLY),
    "more-classes-than-top-k": (
        _bad(classes=list(range(6)), scores=[0.1] * 6, labels=[]),
        INVALID_REPLY,
    ),
    "class-out-of-range": (_bad(classes=[10_000, 0], labels=[]), INVALID_REPLY),
    "class-id-beyond-any-bundle": (_bad(classes=[2**31, 0], labels=[]), INVALID_REPLY),
    "duplicate-class": (_bad(classes=[1, 1], labels=[]), INVALID_REPLY),
    "wrong-mode": (_bad(mode="w99b9"), INVALID_REPLY),
    "wrong-model": (_bad(model="another-model"), INVALID_REPLY),
    "long-backend-name": (_bad(timing_backend="b" * 10_000), INVALID_REPLY),
    "error-with-status-ok": (_error(status="OK", code=0, message="all good, honestly"), INVALID_REPLY),
    "error-with-code-ok": (_error(code=0, message="fine"), INVALID_REPLY),
    "error-with-escapes": (
        _error(
            status=f"INVALID_ARGUMENT{ESC}[2J",
            code=3,
            message=f"{ESC}[31mboom{ESC}[0m\r\nsecond line" + "z" * 5000,
            error_class=f"{ESC}]0;pwned\x07",
        ),
        "UNKNOWN",
    ),
    "error-message-with-escapes": (
        _error(status="INVALID_ARGUMENT", code=3, message=f"{ESC}[2J{ESC}[31mbad frame{ESC}[0m"),
        "INVALID_ARGUMENT",
    ),
    "huge-labels": (_huge_labels, "RESOURCE_EXHAUSTED"),
    "reply-for-a-frame-never-sent": (_stray, "DEADLINE_EXCEEDED"),
    "every-reply-twice": (_twice, "OK"),  # the first is the answer; the second is counted, not taken
}


# ------------------------------------------------------------------------------------------------ the server


class _Servicer(pb_grpc.SplitInferenceServicer):  # type: ignore[misc]
    def __init__(self, server: HostileServer) -> None:
        self.server = server

    async def Describe(self, request: pb.DescribeRequest, context: Any) -> pb.DescribeResponse:
        from slimsplit.server.grpc_service import manifest_to_model_info

        return pb.DescribeResponse(
            protocol_version=PROTOCOL_VERSION,
            server_version="hostile",
            backend="hostile",
            models=[manifest_to_model_info(self.server.bundle.manifest)],
        )

    async def InferStream(self, request_iterator: Any, context: Any) -> Any:
        async for frame in request_iterator:
            self.server.frames += 1
            for reply in self.server.replies(frame):
                yield reply

    async def Infer(self, request: pb.FeatureFrame, context: Any) -> pb.Prediction:
        self.server.frames += 1
        reply = self.server.replies(request)[0]
        if reply.HasField("error"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reply.error.message)
        return reply.prediction


class HostileServer:
    """A ``SplitInference`` server on 127.0.0.1 (its own thread and event loop) that answers ``Describe`` truly
    (the default bundle) and every frame with the replies of ``CASES[case]``; ``case`` may change between runs."""

    def __init__(self, bundle: Bundle, case: str = "nan-score", port: int = 0) -> None:
        self.bundle = bundle
        self.names = tuple(bundle.manifest.classes)
        self.case = case
        self.frames = 0
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def replies(self, frame: pb.FeatureFrame) -> list[pb.StreamReply]:
        return CASES[self.case][0](frame, self.names)

    def start(self) -> HostileServer:
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="hostile-server", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
        return self

    async def _start(self) -> int:
        self._server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
        pb_grpc.add_SplitInferenceServicer_to_server(_Servicer(self), self._server)
        port = self._server.add_insecure_port(f"127.0.0.1:{self._port}")
        await self._server.start()
        return port

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(0), loop).result(10)
            self._server = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(default_bundle_path())


@pytest.fixture(scope="module")
def hostile(bundle: Bundle) -> Iterator[HostileServer]:
    server = HostileServer(bundle).start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ the edge side


class Recording(Controller):
    """Always one mode; records what it observes (a bad reply must never be observed as a success)."""

    name = "recording"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.observed: list[FrameFeedback] = []

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        return Decision(self.mode, "test")

    def observe(self, feedback: FrameFeedback) -> None:
        self.observed.append(feedback)


@dataclass(frozen=True)
class _Encoded:
    payload: bytes
    mode: str
    encoder_ms: float = 0.0
    codec_ms: float = 0.0


class Encoder:
    """Stands in for the encoder (the hostile server does not decode): a fixed payload; counts its calls."""

    def __init__(self) -> None:
        self.mode = ""
        self.calls = 0

    def set_mode(self, name: str) -> None:
        self.mode = name

    def encode(self, image: npt.NDArray[np.uint8]) -> _Encoded:
        self.calls += 1
        return _Encoded(b"\x01" * 64, self.mode)


def run_case(
    server: HostileServer, bundle: Bundle, case: str, *, n: int = 6, unary: bool = False, deadline_ms: float = 1000.0
) -> tuple[RunReport, Recording]:
    server.case = case
    manifest = bundle.manifest
    controller = Recording(manifest.modes[0].name)
    config = ClientConfig(
        target=server.address,
        deadline_ms=deadline_ms,
        max_in_flight=2,
        reconnect=ReconnectPolicy(initial_s=0.01, max_s=0.05),
    )
    frames = [SourceFrame(i, np.zeros((2, 2, 3), np.uint8), label=0) for i in range(n)]
    pipeline = PipelineConfig(
        model=manifest.name, model_version=manifest.version, unary=unary, class_names=tuple(manifest.classes)
    )

    async def go() -> RunReport:
        async with EdgeClient(config) as client:
            await client.wait_ready()
            return await run_frames(client, Encoder(), controller, mode_options(manifest), frames, pipeline)

    return asyncio.run(go()), controller


def _printable_everywhere(records: list[FrameRecord]) -> None:
    for r in records:
        for text in (r.status, r.error, r.reason, *r.class_names, format_frame(r)):
            assert ESC not in text and "\x07" not in text and "\r" not in text, text
        assert len(r.error) <= 1000


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_bad_reply_is_a_counted_error_of_its_frame(hostile: HostileServer, bundle: Bundle, case: str) -> None:
    expected = CASES[case][1]
    deadline_ms = 300.0 if expected == "DEADLINE_EXCEEDED" else 2000.0
    report, controller = run_case(hostile, bundle, case, deadline_ms=deadline_ms)
    records = report.results
    assert len(records) == 6 and sorted(r.index for r in records) == list(range(6))
    statuses = {r.status for r in records}
    assert expected in statuses and statuses <= allowed(expected), [(r.status, r.error) for r in records]
    summary = summarize(records, report.wall_s)
    if expected == "OK":
        assert summary.ok == 6 and report.stray_replies == 6  # the second reply of each frame was counted
        assert all(r.class_names == (bundle.manifest.classes[1], bundle.manifest.classes[0]) for r in records)
    else:
        assert summary.ok == 0 and sum(summary.errors.values()) == sum(summary.dropped.values()) == 6
        assert all(r.error and not r.classes and not r.scores and r.server is None for r in records)
        assert not any(f.ok for f in controller.observed)  # nothing steered the controller
    if case == "reply-for-a-frame-never-sent":
        assert report.stray_replies == 6 and report.late_replies == 0
    _printable_everywhere(records)
    json.dumps([r.to_dict() for r in records], allow_nan=False)  # the run can always be written


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("nan-score", INVALID_REPLY),
        ("negative-timing", INVALID_REPLY),
        ("timing-longer-than-the-round-trip", INVALID_REPLY),
        ("escape-in-label", INVALID_REPLY),
        ("class-out-of-range", INVALID_REPLY),
        ("huge-labels", "RESOURCE_EXHAUSTED"),
        ("error-with-escapes", "INVALID_ARGUMENT"),
    ],
)
def test_unary_calls_check_replies_too(hostile: HostileServer, bundle: Bundle, case: str, expected: str) -> None:
    report, controller = run_case(hostile, bundle, case, n=4, unary=True)
    assert {r.status for r in report.results} == {expected}, [(r.status, r.error) for r in report.results]
    assert all(r.error and not r.classes for r in report.results)
    assert not any(f.ok for f in controller.observed)
    _printable_everywhere(report.results)


def test_good_replies_from_the_same_server_are_answers(hostile: HostileServer, bundle: Bundle) -> None:
    """The control: the rules do not refuse a reply that follows them."""
    CASES["good"] = (lambda frame, names: [pb.StreamReply(prediction=good(frame, names))], "OK")
    try:
        for unary in (False, True):
            report, controller = run_case(hostile, bundle, "good", unary=unary)
            assert all(r.ok and r.server is not None and r.transfer_ms >= 0 for r in report.results)
            assert report.stray_replies == 0 and sum(f.ok for f in controller.observed) == 6
    finally:
        del CASES["good"]


def test_a_run_against_a_hostile_server_always_writes_its_json(
    hostile: HostileServer, bundle: Bundle, tmp_path: Path
) -> None:
    """The CLI end to end: the summary, the exit status and the ``--json-out`` file, with no raw escape printed."""
    mode = bundle.manifest.modes[0].name
    for case in ("nan-score", "nan-timing", "negative-timing", "error-with-escapes", "escape-in-label", "huge-labels"):
        hostile.case = case
        path = tmp_path / f"{case}.json"
        out, err = io.StringIO(), io.StringIO()
        argv = ["--server", hostile.address, "--mode", mode, "--frames", "8", "--plain", "--json-out", str(path)]
        code = edge_main(argv, stdout=out, stderr=err)
        text = out.getvalue() + err.getvalue()
        assert "Traceback" not in text and ESC not in text and "\x07" not in text, text
        assert code == 1, text  # no frame was answered: the run failed, and says so
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert doc["summary"]["frames"] == 8 and doc["summary"]["ok"] == 0
        assert len(doc["frames"]) == 8 and not any(f["ok"] for f in doc["frames"])
        assert ESC not in path.read_text(encoding="utf-8").encode().decode("unicode_escape", "replace")


def test_the_display_never_prints_what_a_server_says_raw() -> None:
    record = FrameRecord(
        1, 0, "w1b1", status="UNKNOWN", error=f"{ESC}[2J{ESC}[31mpwned\u202e", source=f"img{ESC}[1m.png"
    )
    out = io.StringIO()
    display = LineDisplay(out)
    display.frame(record)
    display.finish(summarize([record], 1.0), {})
    assert ESC not in out.getvalue() and "\u202e" not in out.getvalue()
    assert "\\x1b[2J" in out.getvalue()


# ------------------------------------------------------------------------------------------------ units


def test_printable_escapes_control_characters_and_bounds_the_length() -> None:
    assert printable("plain text, ü and 猫") == "plain text, ü and 猫"
    assert printable(f"a{ESC}[31mb\nc\x07\u202e") == "a\\x1b[31mb\\x0ac\\x07\\u202e"
    assert printable("x" * 5000) == "x" * 999 + "…"
    assert len(printable(ESC * 5000)) == 1000


def test_a_frame_error_with_status_ok_is_an_invalid_reply_never_an_answer() -> None:
    for err in (pb.FrameError(status="OK"), pb.FrameError(code=0), pb.FrameError(status="ok", code=3)):
        error = status.error_from_frame_error(err, frame_id=3)
        assert status.status_of(error) == INVALID_REPLY
    error = status.error_from_frame_error(pb.FrameError(status="INVALID_ARGUMENT", message=f"{ESC}[2Jx\ny"))
    assert status.status_of(error) == "INVALID_ARGUMENT" and str(error) == "\\x1b[2Jx\\x0ay"


def test_check_prediction_accepts_the_good_reply_and_bounds_its_size() -> None:
    frame = pb.FeatureFrame(frame_id=4, model="m", mode="w1b1", top_k=5)
    names = tuple(f"class{i}" for i in range(10))
    check_prediction(good(frame, names), top_k=5, rtt_ms=10.0)
    timing = check_timing(good(frame, names).timing)
    assert timing.total_ms == pytest.approx(0.05) and timing.backend == "hostile"
    # the most a top-5 reply can take, with the longest labels, fits the default bound with room to spare
    longest = good(frame, names)
    longest.ClearField("classes")
    longest.ClearField("scores")
    longest.ClearField("labels")
    longest.classes.extend(range(60_000, 60_005))
    longest.scores.extend([0.5] * 5)
    longest.labels.extend(["猫" * MAX_LABEL_CHARS] * 5)
    check_prediction(longest, top_k=5)
    assert longest.ByteSize() < reply_bytes_bound(5) == 64 * 1024
    assert reply_bytes_bound(0) > 1000 * 4 * MAX_LABEL_CHARS  # the server's default top-k (up to 1000) fits
    assert reply_bytes_bound(1000) == reply_bytes_bound(0)


def test_write_json_is_always_valid_json_whatever_a_record_holds(tmp_path: Path) -> None:
    """The last line of defence: a record with non-finite figures nested anywhere still writes."""
    from slimsplit.records import ServerTiming

    record = FrameRecord(
        1, 0, "w1b1", scores=(math.nan, math.inf), server=ServerTiming(total_ms=math.nan), latency_ms=math.inf
    )
    report = RunReport(results=[record], wall_s=1.0)
    path = tmp_path / "run.json"
    write_json(path, report, summarize([record], 1.0), {})
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["frames"][0]["scores"] == [None, None] and doc["frames"][0]["server"]["total_ms"] is None
    assert doc["stray_replies"] == 0


# ------------------------------------------------------------------------------------------------ memory


def _rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan  # pragma: no cover


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_megabyte_labels_are_refused_before_they_are_parsed_and_rss_stays_bounded(bundle: Bundle) -> None:
    """The issue's figure: two 5 MB labels per reply took the edge to 2.6 GB RSS for 80 frames. The channel refuses
    a reply over the bound (RESOURCE_EXHAUSTED, the stream reopens), so the edge's RSS stays flat. The server runs
    in its own process, so that what is measured is the edge alone."""
    with subprocess.Popen(
        [sys.executable, __file__, "huge-labels"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            port = int(proc.stdout.readline())
            server = HostileServer(bundle)  # not started: only its address is used
            server.port = port
            run_case(server, bundle, "huge-labels", n=5)  # warm up (imports, gRPC's own allocations)
            before = _rss_mb()
            report, _ = run_case(server, bundle, "huge-labels", n=80)
            grown = _rss_mb() - before
        finally:
            proc.stdin.close()
            proc.wait(10)
    statuses = [r.status for r in report.results]
    assert set(statuses) <= BROKEN_STREAM and statuses.count("RESOURCE_EXHAUSTED") >= 40, statuses
    assert all("larger than max" in r.error for r in report.results if r.status == "RESOURCE_EXHAUSTED")
    # 80 replies of 10 MB each would be 800 MB kept (the issue measured 2.6 GB); what is left is the allocator's
    # noise (20 to 80 MB from run to run, flat over more frames)
    assert grown < 150.0, f"the edge's RSS grew {grown:.1f} MB over 80 frames of 10 MB replies"


def _serve(case: str) -> None:
    """Serve ``case`` in this process: print the port, serve until stdin closes."""
    server = HostileServer(Bundle.open(default_bundle_path()), case).start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    _serve(sys.argv[1])
