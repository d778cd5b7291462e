"""A small dynamic batcher: frames of one model+mode are grouped and run in one tail call.

Each model+mode has a bounded queue and ``workers_per_mode`` worker tasks. A worker takes the first waiting
frame, then whatever else is queued (up to ``max_batch_size``), waiting at most ``max_wait_us`` for company,
and runs the tail on a thread of the shared executor so the event loop keeps serving. With ``max_wait_us = 0``
no latency is added: batches form only from frames that queued while the previous batch was running.

A full queue refuses the frame with :class:`~slimsplit.errors.Overloaded`; a frame whose deadline passed while
it waited is answered with :class:`~slimsplit.errors.DeadlineExceeded` without running; a frame whose caller
went away (cancelled future) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Frames queued or running."""
        return self._queue.qsize() + self._taken

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
            out = await loop.run_in_executor(self._executor, self._tail, x)
            if out.logits.ndim != 2 or out.logits.shape[0] != len(live):
                raise BackendError(
                    f"{self.name}: the tail returned logits of shape {list(out.logits.shape)} "
                    f"for a batch of {len(live)}"
                )
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
