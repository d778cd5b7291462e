"""The good client: the real edge client (:class:`~slimsplit.edge.client.EdgeClient` over a reconnecting
``InferStream``) sending real frames of the shipped bundle at 10 Hz with a deadline, checking every answer.

Its frames are the shipped sample images encoded by the bundle's encoder in a few modes (:func:`good_frames`); the
class each must get is what a quiet server answers for it, measured before any fault (:func:`reference_classes`).
:class:`GoodClient` runs on its own event loop in a thread (so a scenario's main thread can inject faults) and
tallies, per frame, one of: a correct prediction in time, a wrong prediction, a failure with its status and
message, or nothing at all (unanswered when it stops). Every frame's send time and outcome is kept
(:attr:`GoodClient.events`) so a scenario can count what was lost around a fault.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.faults.figures import GoodTally
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig
from slimsplit.edge.runtime import EncoderRuntime
from slimsplit.edge.sources import load_sample
from slimsplit.edge.transport import Outcome
from slimsplit.protocol import PROTOCOL_VERSION
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

GOOD_MODES = ("w2b2", "w4b4", "w8b8", "w16b4")


@dataclass(frozen=True)
class GoodFrame:
    mode: str
    payload: bytes


@dataclass(frozen=True)
class Event:
    """One good frame: sent at ``t_s`` (seconds since the client started), its status ("OK", "WRONG", a status
    name, or "NONE" while unanswered) and round trip."""

    t_s: float
    status: str
    rtt_ms: float


def good_frames(
    bundle_path: Path | None = None, images: int = 24, modes: tuple[str, ...] = GOOD_MODES
) -> list[GoodFrame]:
    """The shipped sample's first ``images`` images, encoded in each of ``modes``."""
    bundle = Bundle.open(bundle_path or default_bundle_path())
    runtime = EncoderRuntime(bundle)
    source = load_sample(bundle.manifest.input)
    out = []
    for sf in source.take(images):
        for mode in modes:
            runtime.set_mode(mode)
            out.append(GoodFrame(mode, runtime.encode(np.asarray(sf.image)).payload))
    return out


def model_name(bundle_path: Path | None = None) -> str:
    return Bundle.open(bundle_path or default_bundle_path()).manifest.name


def reference_classes(address: str, model: str, frames: list[GoodFrame], timeout_s: float = 10.0) -> list[int]:
    """The top-1 class a quiet server gives each frame (unary ``Infer``, one at a time)."""
    with grpc.insecure_channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout_s)
        stub = pb_grpc.SplitInferenceStub(ch)
        out = []
        for i, f in enumerate(frames):
            frame = pb.FeatureFrame(
                protocol_version=PROTOCOL_VERSION, frame_id=i + 1, model=model, mode=f.mode, features=f.payload
            )
            out.append(int(stub.Infer(frame, timeout=timeout_s).classes[0]))
        return out


class GoodClient:
    """See the module docstring. ``with GoodClient(...) as good: ...``; :meth:`tally` after it stopped."""

    def __init__(
        self,
        address: str,
        model: str,
        frames: list[GoodFrame],
        reference: list[int],
        *,
        hz: float = 10.0,
        deadline_ms: float = 100.0,
    ) -> None:
        if len(frames) != len(reference) or not frames:
            raise ValueError("need one reference class per frame")
        self.address = address
        self.model = model
        self.frames = frames
        self.reference = reference
        self.period_s = 1.0 / hz
        self.deadline_s = deadline_ms / 1e3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="faults-good-client", daemon=True)
        self.t0 = time.monotonic()
        self._events: dict[int, Event] = {}
        self._lock = threading.Lock()
        self._duplicates = 0
        self._late = 0
        self._reconnects = 0
        self.error: BaseException | None = None
        self.started = threading.Event()

    # ----------------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> GoodClient:
        self.t0 = time.monotonic()
        self._thread.start()
        if not self.started.wait(30):
            raise RuntimeError("the good client did not start")
        if self.error is not None:
            raise RuntimeError(f"the good client failed to start: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ----------------------------------------------------------------------------------------------- running
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # recorded; the scenario reports it
            self.error = exc
            self.started.set()

    async def _run(self) -> None:
        config = ClientConfig(target=self.address, deadline_ms=self.deadline_s * 1e3, max_in_flight=64)
        async with EdgeClient(config) as client:
            await client.wait_ready(30)
            stream = client.open_stream(seed=0)
            self.started.set()
            frame_id = 0
            next_at = time.monotonic()
            while not self._stop.is_set():
                frame_id += 1
                idx = (frame_id - 1) % len(self.frames)
                gf = self.frames[idx]
                frame = pb.FeatureFrame(
                    protocol_version=PROTOCOL_VERSION, frame_id=frame_id, model=self.model, mode=gf.mode,
                    features=gf.payload,
                )  # fmt: skip
                fid = frame_id
                with self._lock:
                    self._events[fid] = Event(self.now(), "NONE", 0.0)
                try:
                    await stream.submit(frame, self.deadline_s, functools.partial(self._done, fid, idx))
                except Exception as exc:  # the transport gave up: a failure with its reason
                    self._record(fid, type(exc).__name__ if str(exc) else "", 0.0)
                next_at += self.period_s
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    next_at = time.monotonic()  # late: do not burst to catch up
            await stream.drain(2.0)
            self._late = stream.late_replies
            self._reconnects = stream.reconnects
            await stream.aclose()

    def _record(self, fid: int, status: str, rtt_ms: float) -> None:
        with self._lock:
            ev = self._events.get(fid)
            if ev is None:
                return
            if ev.status != "NONE":
                self._duplicates += 1
                return
            self._events[fid] = Event(ev.t_s, status or "NO_REASON", rtt_ms)

    def _done(self, fid: int, idx: int, outcome: Outcome) -> None:
        if outcome.prediction is not None:
            classes = list(outcome.prediction.classes)
            good = bool(classes) and classes[0] == self.reference[idx]
            self._record(fid, "OK" if good else "WRONG", outcome.rtt_ms)
        elif outcome.error is None or outcome.status == "OK" or not outcome.message:
            self._record(fid, "", outcome.rtt_ms)
        else:
            self._record(fid, outcome.status, outcome.rtt_ms)

    # ----------------------------------------------------------------------------------------------- results
    @property
    def events(self) -> list[Event]:
        with self._lock:
            return [self._events[k] for k in sorted(self._events)]

    def counts_between(self, t0: float, t1: float) -> dict[str, int]:
        """Frames sent in [t0, t1) by status."""
        out: dict[str, int] = {}
        for ev in self.events:
            if t0 <= ev.t_s < t1:
                out[ev.status] = out.get(ev.status, 0) + 1
        return out

    def tally(self, since_s: float = 0.0) -> GoodTally:
        events = [e for e in self.events if e.t_s >= since_s]
        t = GoodTally(sent=len(events), late_replies=self._late, reconnects=self._reconnects)
        rtts = sorted(e.rtt_ms for e in events if e.status == "OK")
        for e in events:
            if e.status == "OK":
                t.ok += 1
            elif e.status == "WRONG":
                t.ok += 1
                t.wrong += 1
            elif e.status == "NONE":
                t.unanswered += 1
            elif e.status == "NO_REASON":
                t.no_reason += 1
            else:
                t.failed[e.status] = t.failed.get(e.status, 0) + 1
        t.no_reason += self._duplicates
        if rtts:
            t.rtt_p50_ms = round(rtts[len(rtts) // 2], 3)
            t.rtt_p99_ms = round(rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))], 3)
        return t
