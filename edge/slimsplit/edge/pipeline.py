"""The per-frame loop: source frame -> controller -> encoder -> transport -> :class:`~slimsplit.records.FrameRecord`.

The controller is driven through :class:`~slimsplit.control.loop.ControlLoop` (the same three calls the
discrete-event simulator makes: ``decide`` at capture, ``sent`` when the payload is handed to gRPC, ``completed``
when the prediction or error arrives), which keeps the in-flight accounting and the in-flight limit K.

* Paced sources (``fps > 0``, a camera): a frame is captured on its tick whatever happens and the controller is
  asked at once (nothing blocks before the decision); at the limit K, or when the controller says no mode is
  worth sending, the frame is skipped (reported ``SKIPPED`` with the reason), like a real-time system must.
* Unpaced sources (``fps == 0``, a data set): the next frame waits for a free slot instead, and a frame the
  controller would skip while frames are in flight waits for the next completion and is decided again (a data
  set has no capture instant to miss).
* While the transport is down and waiting to reconnect (:attr:`~slimsplit.edge.transport.FrameTransport.ready` is
  False: a frame sent now would fail at once), no frame is encoded for nothing: a paced source skips the frame of
  each tick (``SKIPPED``, reason ``not connected``) and its controller is not asked; an unpaced one waits before
  taking its next frame until the transport is ready again (the connection is back, or the reconnection backoff
  says to try again; a frame it then sends counts from when it was taken, so waiting costs none of its deadline).

An admitted frame is encoded in a one-thread executor (so replies keep being read and time-stamped meanwhile) and
submitted over the connection's :class:`~slimsplit.edge.transport.FrameTransport` (gRPC stream, unary calls, or an
in-process core: the loop is the same). Every frame produces exactly one result, delivered to ``on_result`` as soon
as it is known. A prediction that disagrees with the frame it answers (its mode or model, a class id outside the
bundle's classes, a label that is not the bundle's name; :func:`~slimsplit.edge.replies.check_for_run`) fails
that frame (``INVALID_REPLY``) and is not observed by the controller.

Every result is added to the pipeline's :class:`~slimsplit.records.RunTally` (the run's summary in bounded memory:
a run of days holds no per-frame state) and, with :attr:`PipelineConfig.keep_records`, kept for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from slimsplit.codec.planes import split_units
from slimsplit.control.base import Controller, Decision, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.loop import ControlLoop
from slimsplit.edge.capture import stale_records
from slimsplit.edge.client import wire_bytes
from slimsplit.edge.replies import check_for_run
from slimsplit.edge.sources import SourceFrame, aiter_frames
from slimsplit.edge.transport import Connection, Outcome
from slimsplit.errors import ConfigError, SlimsplitError
from slimsplit.records import OK, SKIPPED, FrameRecord, RunSummary, RunTally, ServerTiming

_perf = time.perf_counter
_TICK_GRACE_S = 0.005  # how long a paced capture waits for a slot that is about to free (timer wake-ups
# on a loaded machine come several ms late; 2 ms made one-frame-at-a-time runs skip frames now and then)
_MIN_WAIT_S = 0.001  # a frame encoded past its give-up time still gets this long (then it is reported late)
NOT_CONNECTED = "not connected (the transport is waiting to reconnect)"
"""The reason a paced frame is skipped while the transport is down (:attr:`FrameTransport.ready` False)."""


class EncodedLike(Protocol):
    """What an encoder returns for one image (``slimsplit.edge.runtime.EncodedFrame`` satisfies it)."""

    @property
    def payload(self) -> bytes: ...
    @property
    def mode(self) -> str: ...
    @property
    def encoder_ms(self) -> float: ...
    @property
    def codec_ms(self) -> float: ...


class Encoder(Protocol):
    """The part of ``EncoderRuntime`` the pipeline uses."""

    def set_mode(self, name: str) -> None: ...
    def encode(self, image: npt.NDArray[np.uint8]) -> EncodedLike: ...


@dataclass(frozen=True)
class PipelineConfig:
    """``fps`` = capture rate (0 = as fast as the slots allow; a late frame is sent at once, without catch-up
    bursts). ``unary`` = ask the connection for one call per frame instead of a stream; ``planes`` = for a plane
    stream (progressive transmission; the encoder makes plane units). ``encode_in_thread`` = run the
    encoder in a worker thread so replies are time-stamped while the next frame encodes (off: encode on the
    loop). ``class_names``: the bundle's classes (a reply's class ids and labels are checked against them; empty:
    not checked)."""

    model: str
    model_version: str = ""
    fps: float = 0.0
    unary: bool = False
    planes: bool = False  # frames as bit planes over a PlaneStream (the encoder must make plane units)
    encode_in_thread: bool = True
    origin: float | None = None  # time.perf_counter() instant that results' ``t_s`` count from (None: run start)
    class_names: tuple[str, ...] = ()
    keep_records: bool = True  # keep every frame's record in the report (about 1.5 KB a frame); else the tally only

    def __post_init__(self) -> None:
        if not self.fps >= 0 or not math.isfinite(self.fps):
            raise ConfigError(f"fps must be a finite number >= 0, got {self.fps}")
        if not self.model:
            raise ConfigError("the pipeline needs a model name (the bundle's manifest name)")


@dataclass
class RunReport:
    """A run: its tally (every frame, in bounded memory), its records in frame order (when they were kept:
    :attr:`PipelineConfig.keep_records`) and its wall time."""

    results: list[FrameRecord] = field(default_factory=list)
    tally: RunTally | None = None  # None: the report holds every record; the tally is built from them
    wall_s: float = 0.0
    reconnects: int = 0
    late_replies: int = 0
    stray_replies: int = 0  # replies for no frame in flight that were not late ones (never sent, duplicates)
    rtt_ms: float | None = None  # round trip measured before the run (set by the caller that measured it)
    resent: int = 0  # frames re-sent on another replica after their stream broke (several replicas only)

    def run_tally(self) -> RunTally:
        """The run's tally (per mode too): the pipeline's, or one built from :attr:`results`."""
        if self.tally is None:
            self.tally = RunTally.of(self.results, by_mode=True)
        return self.tally

    def summary(self) -> RunSummary:
        return self.run_tally().summary(self.wall_s)


class _Frame:
    """Bookkeeping of one frame between submit and result."""

    __slots__ = ("captured", "decision", "encoded", "frame_id", "record", "source")

    def __init__(self, source: SourceFrame, captured: float, decision: Decision) -> None:
        self.source = source
        self.captured = captured
        self.decision = decision
        self.frame_id = 0
        self.encoded: EncodedLike | None = None
        self.record: FrameRecord | None = None


class Pipeline:
    """Runs frames through ``encoder`` and a transport of ``client`` under ``controller``; one instance per run."""

    def __init__(
        self,
        client: Connection,
        encoder: Encoder,
        controller: Controller,
        modes: Sequence[ModeOption],
        config: PipelineConfig,
        on_result: Callable[[FrameRecord], None] | None = None,
    ) -> None:
        self.client = client
        self.encoder = encoder
        self.controller = controller
        self.config = config
        self.on_result = on_result
        cc = client.config
        run = RunConfig(deadline_ms=cc.deadline_ms, fps=config.fps, max_in_flight=cc.max_in_flight)
        self.control = ControlLoop(controller, modes, run, keep_records=False)
        self._deadline_ms = cc.deadline_ms
        self._give_up_s = cc.give_up_s
        self._origin = 0.0
        self._results: list[FrameRecord] = []
        self.tally = RunTally(by_mode=True)
        self._sent: deque[_Frame] = deque()  # sent frames in order, until they and every earlier one are tallied
        self._callback_error: BaseException | None = None
        self._idle = asyncio.Event()  # set while no frame is in flight
        self._idle.set()
        self._progress = asyncio.Event()  # set by every completion

    async def run(self, frames: Iterable[SourceFrame] | AsyncIterable[SourceFrame]) -> RunReport:
        cfg = self.config
        period = 1.0 / cfg.fps if cfg.fps > 0 else 0.0
        executor = ThreadPoolExecutor(1, thread_name_prefix="slimsplit-encode") if cfg.encode_in_thread else None
        transport = self.client.open_transport(unary=cfg.unary, planes=cfg.planes)
        loop = asyncio.get_running_loop()
        control = self.control
        start = _perf()
        self._origin = cfg.origin if cfg.origin is not None else start
        limit = control.max_in_flight
        next_at = start
        try:
            async for source in aiter_frames(frames):  # a live source's waits run off the event loop
                for stale in stale_records(source, deadline_ms=self._deadline_ms, origin=self._origin):
                    self._emit(stale)
                tick = 0.0
                if period:
                    tick = next_at
                    delay = next_at - _perf()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at = max(next_at + period, _perf() - period)
                    if control.in_flight_frames >= limit:
                        # a slot whose give-up timer is due at this very tick (one frame at a time with period =
                        # deadline) frees a little after it: wait that moment instead of skipping the frame
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._next_completion(), _TICK_GRACE_S)
                else:
                    while control.in_flight_frames >= limit:
                        await self._next_completion()
                if not transport.ready:
                    if period:
                        self._emit(self._not_connected(source, _perf()))
                        continue
                    await transport.wait_ready()
                # a live frame counts from its arrival (it may have waited for the edge), a stored one from now
                captured = source.captured_at if source.captured_at is not None else _perf()
                fid = self.client.next_frame_id()
                decision = control.decide(fid, captured)
                while decision.mode is None and not period and control.in_flight_frames:
                    await self._next_completion()
                    captured = _perf()
                    decision = control.decide(fid, captured)
                if decision.mode is None:
                    self._emit(
                        FrameRecord(
                            fid,
                            source.index,
                            "",
                            SKIPPED,
                            decision.reason,
                            source.label,
                            reason=decision.reason,
                            estimate_bps=decision.estimate_bps,
                            predicted_ms=decision.predicted_ms,
                            deadline_ms=self._deadline_ms,
                            t_s=captured - self._origin,
                            source=source.name,
                        )
                    )
                    continue
                item = _Frame(source, captured, decision)
                item.frame_id = fid
                mode = decision.mode
                if executor is not None:
                    encoded = await loop.run_in_executor(executor, self._encode, mode, source.image)
                else:
                    encoded = self._encode(mode, source.image)
                item.encoded = encoded
                msg = self.client.make_frame(
                    mode=encoded.mode,
                    payload=encoded.payload,
                    model=cfg.model,
                    model_version=cfg.model_version,
                    frame_id=fid,
                )
                self._idle.clear()
                sent_at = _perf()
                # give up give_up_s after the capture (the deadline counts from there), however long encoding took;
                # a paced frame counts from its tick when it was captured just after it, so that with period =
                # deadline its slot frees at the next tick and small wake-up delays do not add up frame after frame
                origin = max(tick, captured - _TICK_GRACE_S) if period else captured
                give_up_s = max(self._give_up_s - (sent_at - origin), _MIN_WAIT_S)
                msg.deadline_ms = max(1, math.ceil(give_up_s * 1000))  # the server never starts it after that
                control.sent(fid, wire_bytes(msg), sent_at)  # what crosses the link: payload + framing
                self._sent.append(item)
                await transport.submit(msg, give_up_s, functools.partial(self._complete, item))
                if self._callback_error is not None:
                    break
            if control.in_flight_frames:
                await self._idle.wait()
        finally:
            await transport.aclose()
            if executor is not None:
                executor.shutdown(wait=False)
        wall = _perf() - start
        if self._callback_error is not None:
            raise self._callback_error
        self._results.sort(key=lambda r: r.index)
        return RunReport(
            results=self._results,
            tally=self.finish_tally(),
            wall_s=wall,
            reconnects=transport.reconnects,
            late_replies=transport.late_replies,
            stray_replies=transport.stray_replies,
            resent=transport.resent,
        )

    def _not_connected(self, source: SourceFrame, captured: float) -> FrameRecord:
        return FrameRecord(
            self.client.next_frame_id(),
            source.index,
            "",
            SKIPPED,
            NOT_CONNECTED,
            source.label,
            reason=NOT_CONNECTED,
            deadline_ms=self._deadline_ms,
            t_s=captured - self._origin,
            source=source.name,
        )

    async def _next_completion(self) -> None:
        self._progress.clear()
        await self._progress.wait()

    def _encode(self, mode: str, image: npt.NDArray[np.uint8]) -> EncodedLike:
        self.encoder.set_mode(mode)
        return self.encoder.encode(image)

    def _complete(self, item: _Frame, outcome: Outcome) -> None:
        t0 = _perf()
        encoded = item.encoded
        assert encoded is not None
        nbytes = len(encoded.payload)
        rtt_ms = outcome.rtt_ms
        prediction = outcome.prediction
        server: ServerTiming | None = None
        if prediction is not None:
            try:  # the reply is not to be trusted: one that breaks a rule fails the frame
                server = ServerTiming.from_pb(prediction.timing)
                check_for_run(
                    prediction, mode=encoded.mode, model=self.config.model, class_names=self.config.class_names
                )
            except SlimsplitError as exc:
                outcome, prediction, server = replace(outcome, prediction=None, error=exc), None, None
        planes = prediction.planes_used if prediction is not None else 0
        if self.config.planes:  # the server waited for planes: its own time is the queue and the tail
            server_ms = server.queue_ms + server.tail_ms if server is not None else 0.0
            used = sum(len(u) for u in split_units(encoded.payload)[:planes]) if planes else 0
            self.control.completed(item.frame_id, outcome.received_at, server_ms, outcome.ok, delivered_bytes=used)
        else:
            self.control.completed(
                item.frame_id, outcome.received_at, server.total_ms if server is not None else 0.0, outcome.ok
            )
        source = item.source
        decision = item.decision
        t_s = item.captured - self._origin
        sent_s = outcome.sent_at - self._origin
        latency_ms = (outcome.received_at - item.captured) * 1e3
        reply: dict[str, Any]  # what the reply adds to the record (built once: this runs for every frame)
        if prediction is not None and server is not None:
            reply = {
                "status": OK,
                "classes": tuple(prediction.classes),
                "scores": tuple(prediction.scores),
                "class_names": tuple(prediction.labels),
                "rtt_ms": rtt_ms,
                "transfer_ms": rtt_ms - server.total_ms,
                "response_ms": (_perf() - t0) * 1e3,
                "server": server,
            }
        else:
            reply = {"status": outcome.status, "error": outcome.message}
        result = FrameRecord(
            frame_id=item.frame_id,
            index=source.index,
            mode=encoded.mode,
            label=source.label,
            payload_bytes=nbytes,
            encoder_ms=encoded.encoder_ms,
            codec_ms=encoded.codec_ms,
            latency_ms=latency_ms,
            attempt=outcome.attempt,
            reason=decision.reason,
            estimate_bps=decision.estimate_bps,
            predicted_ms=decision.predicted_ms,
            deadline_ms=self._deadline_ms,
            t_s=t_s,
            sent_s=sent_s,
            source=source.name,
            planes=planes,
            **reply,
        )
        if self.control.in_flight_frames == 0:
            self._idle.set()
        self._progress.set()
        item.record = result
        sent = self._sent
        while sent and (done := sent[0].record) is not None:  # tallied in the order sent (switches: neighbours)
            sent.popleft()
            self.tally.add(done)
        self._emit(result, tallied=True)

    def finish_tally(self) -> RunTally:
        """The tally, with the answered frames still waiting behind one never answered (a cut run) added."""
        for item in self._sent:
            if item.record is not None:
                self.tally.add(item.record)
        self._sent.clear()
        return self.tally

    def cut_report(self, cut: Iterable[FrameRecord], wall_s: float) -> RunReport:
        """The report of a run stopped before it ended: the results so far and ``cut`` (the records of the frames
        in flight when it stopped, that will never have one of their own)."""
        tally = self.finish_tally()
        cut = list(cut)
        for record in cut:
            tally.add(record)
        results = sorted([*self._results, *cut], key=lambda r: r.index) if self.config.keep_records else []
        return RunReport(results=results, tally=tally, wall_s=wall_s)

    def _emit(self, result: FrameRecord, *, tallied: bool = False) -> None:
        """Keep ``result`` (if asked), show it, and tally it unless :meth:`_complete` does (a frame never sent has
        no mode: its place among the sent frames does not matter)."""
        if not tallied:
            self.tally.add(result)
        if self.config.keep_records:
            self._results.append(result)
        if self.on_result is not None and self._callback_error is None:
            try:
                self.on_result(result)
            except Exception as exc:  # a display bug must not break the stream; re-raised after the run
                self._callback_error = exc


async def run_frames(
    client: Connection,
    encoder: Encoder,
    controller: Controller,
    modes: Sequence[ModeOption],
    frames: Iterable[SourceFrame] | AsyncIterable[SourceFrame],
    config: PipelineConfig,
    on_result: Callable[[FrameRecord], None] | None = None,
) -> RunReport:
    """Run ``frames`` through one fresh :class:`Pipeline` and return its report."""
    return await Pipeline(client, encoder, controller, modes, config, on_result).run(frames)


__all__ = ["NOT_CONNECTED", "EncodedLike", "Encoder", "Pipeline", "PipelineConfig", "RunReport", "run_frames"]
