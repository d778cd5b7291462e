"""A small dynamic batcher: frames of one model+mode are grouped and run in one tail call.

Each model+mode has a bounded queue and ``workers_per_mode`` worker tasks. A worker takes the first waiting
frame, then whatever else is queued (up to ``max_batch_size``), waiting at most ``max_wait_us`` for company,
and runs the tail on a thread of the shared executor so the event loop keeps serving. With ``max_wait_us = 0``
no latency is added: batches form only from frames that queued while the previous batch was running.

Fast path: for a tail that is plain CPU work (``TailRunner.inline_safe``), when nothing of the model+mode is
queued or running and its tail has recently taken at most ``inline_tail_max_us`` per call,
:meth:`ModeBatcher.try_inline` runs the frame's tail directly on the caller's thread (the event loop): no queue,
no worker wake-up, no thread hop, which on a small machine is most of the serving overhead for a cheap tail.
The tail time it tests is measured where the tail runs (a moving average per call), so a tail that becomes
slow goes back to the executor by itself; and once tails keep the server busy (:class:`TailLoad` above
``inline_max_load``), every frame goes through the executor, where a tail runs beside the loop on another core.

A full queue refuses the frame with :class:`~slimsplit.errors.Overloaded`; a frame whose deadline passed while
it waited is answered with :class:`~slimsplit.errors.DeadlineExceeded` without running; a frame whose caller
went away (cancelled future) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from slimsplit.errors import BackendError, DeadlineExceeded, Overloaded, Unavailable
from slimsplit.server.backends.base import TailOutput
from slimsplit.server.config import BatchingConfig

TailFn = Callable[[npt.NDArray[np.float32]], TailOutput]
BatchHook = Callable[[int], None]


@dataclass(frozen=True)
class BatchResult:
    """One frame's share of a tail batch."""

    logits: npt.NDArray[np.float32]  # [num_classes]
    queue_s: float
    tail_s: float  # the batch's tail time divided by its size
    batch_size: int
    device_cycles: int | None
    device_ms: float | None


class TailLoad:
    """How busy the tails keep the server: tail seconds per wall-clock second over the last ``tau_s`` (an
    exponentially decayed sum), over every model and mode of one core, wherever the tails ran. Above
    ``BatchingConfig.inline_max_load`` the batchers stop running tails on the event loop: under load a tail on an
    executor thread runs beside the loop's gRPC work on another core, which is worth more than the thread hop."""

    def __init__(self, tau_s: float = 0.05) -> None:
        self.tau_s = tau_s
        self._busy = 0.0
        self._at = 0.0

    def add(self, seconds: float, now: float) -> None:
        self._busy = self._busy * math.exp(-max(0.0, now - self._at) / self.tau_s) + seconds
        self._at = now

    def utilization(self, now: float) -> float:
        return self._busy * math.exp(-max(0.0, now - self._at) / self.tau_s) / self.tau_s


@dataclass
class _Item:
    features: npt.NDArray[np.float32]
    future: asyncio.Future[BatchResult]
    enqueued: float
    deadline: float | None  # time.perf_counter() value


class ModeBatcher:
    """The queue and workers of one model+mode. Create and use it on one event loop."""

    def __init__(
        self,
        name: str,
        tail: TailFn,
        config: BatchingConfig,
        executor: Executor,
        on_batch: BatchHook | None = None,
        *,
        inline_safe: bool = False,
        load: TailLoad | None = None,
    ) -> None:
        self.name = name
        self._tail = tail
        self._config = config
        self._executor = executor
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=config.queue_capacity)
        self._workers: list[asyncio.Task[None]] = []
        self._taken = 0  # frames taken off the queue and not yet answered
        self._closed = False
        self._inline_safe = inline_safe  # the tail may run on the event loop (TailRunner.inline_safe)
        self._tail_s: float | None = None  # moving average of one tail call's time, seconds
        self._load = load if load is not None else TailLoad()  # shared by the batchers of one core
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Frames queued or running."""
        return self._queue.qsize() + self._taken

    @property
    def tail_s(self) -> float | None:
        """The moving average of one tail call's time (seconds); None before the first call."""
        return self._tail_s

    def _observe(self, seconds: float) -> None:
        self._tail_s = seconds if self._tail_s is None else 0.8 * self._tail_s + 0.2 * seconds
        self._load.add(seconds, time.perf_counter())

    def _timed_tail(self, x: npt.NDArray[np.float32]) -> tuple[TailOutput, float]:
        t0 = time.perf_counter()
        out = self._tail(x)
        return out, time.perf_counter() - t0

    def _check_logits(self, out: TailOutput, n: int) -> None:
        if out.logits.ndim != 2 or out.logits.shape[0] != n:
            raise BackendError(
                f"{self.name}: the tail returned logits of shape {list(out.logits.shape)} for a batch of {n}"
            )

    def try_inline(self, features: npt.NDArray[np.float32]) -> BatchResult | None:
        """Run one frame [C, H, W] now, on the calling thread, when this model+mode is idle and its tail is
        known to be cheap (see the module docstring); None when the frame must be :meth:`submit`-ted instead.
        The tail's errors propagate."""
        if self._closed:
            raise Unavailable(f"{self.name}: the server is shutting down")
        limit = self._config.inline_tail_max_us * 1e-6
        if not self._inline_safe or limit <= 0 or self._tail_s is None or self._tail_s > limit or self.pending:
            return None
        if self._load.utilization(time.perf_counter()) > self._config.inline_max_load:
            return None  # busy: leave the loop free for gRPC and run tails beside it
        out, seconds = self._timed_tail(features[None])
        self._check_logits(out, 1)
        self._observe(seconds)
        if self._on_batch is not None:
            self._on_batch(1)
        return BatchResult(out.logits[0], 0.0, seconds, 1, out.device_cycles, out.device_ms)

    def submit(self, features: npt.NDArray[np.float32], deadline: float | None = None) -> asyncio.Future[BatchResult]:
        """Queue one frame [C, H, W]; the future resolves to its :class:`BatchResult` or the tail's error."""
        if self._closed:
            raise Unavailable(f"{self.name}: the server is shutting down")
        loop = asyncio.get_running_loop()
        if not self._workers:
            self._workers = [
                loop.create_task(self._work(), name=f"batcher:{self.name}:{i}")
                for i in range(self._config.workers_per_mode)
            ]
        fut: asyncio.Future[BatchResult] = loop.create_future()
        try:
            self._queue.put_nowait(_Item(features, fut, time.perf_counter(), deadline))
        except asyncio.QueueFull:
            raise Overloaded(
                f"{self.name}: {self._config.queue_capacity} frames are already waiting; retry later",
                queue_capacity=self._config.queue_capacity,
            ) from None
        self._idle.clear()
        return fut

    async def _collect(self, batch: list[_Item]) -> None:
        """Fill ``batch`` (owned by the caller, so frames taken are never lost on cancellation)."""
        first = await self._queue.get()
        batch.append(first)
        self._taken += 1
        limit = self._config.max_batch_size
        while len(batch) < limit and not self._queue.empty():
            batch.append(self._queue.get_nowait())
            self._taken += 1
        if len(batch) < limit and self._config.max_wait_us > 0:
            until = first.enqueued + self._config.max_wait_us * 1e-6
            while len(batch) < limit:
                remaining = until - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    break
                batch.append(item)
                self._taken += 1

    def _live(self, batch: list[_Item], now: float) -> list[_Item]:
        live: list[_Item] = []
        for item in batch:
            if item.future.done():  # the caller gave up (cancelled)
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(
                    DeadlineExceeded(f"{self.name}: the frame's deadline passed while it waited in the queue")
                )
                continue
            live.append(item)
        return live

    @staticmethod
    def _fail(items: list[_Item], exc: BaseException) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        start = time.perf_counter()
        live = self._live(batch, start)
        if not live:
            return
        x = np.stack([item.features for item in live]) if len(live) > 1 else live[0].features[None]
        try:
            out, seconds = await loop.run_in_executor(self._executor, self._timed_tail, x)
            self._check_logits(out, len(live))
            self._observe(seconds)
        except Exception as exc:
            self._fail(live, exc)
            return
        end = time.perf_counter()
        n = len(live)
        share = (end - start) / n
        cycles = None if out.device_cycles is None else out.device_cycles // n
        dev_ms = None if out.device_ms is None else out.device_ms / n
        for i, item in enumerate(live):
            if not item.future.done():
                item.future.set_result(BatchResult(out.logits[i], start - item.enqueued, share, n, cycles, dev_ms))
        if self._on_batch is not None:
            self._on_batch(n)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch: list[_Item] = []
            try:
                await self._collect(batch)
                await self._run(loop, batch)
            except asyncio.CancelledError:
                self._fail(batch, Unavailable(f"{self.name}: the server is shutting down"))
                raise
            finally:
                self._taken -= len(batch)
                if self._queue.empty() and self._taken == 0:
                    self._idle.set()

    async def drain(self) -> None:
        """Refuse new frames and wait until every queued frame has been answered."""
        self._closed = True
        if self._workers:
            await self._idle.wait()

    async def aclose(self) -> None:
        """Stop the workers; frames still queued are answered with Unavailable."""
        self._closed = True
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(Unavailable(f"{self.name}: the server is shutting down"))
        self._idle.set()
