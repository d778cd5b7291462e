"""``--simulate``: a sweep point in virtual time against a model of the server, the same for the same seed.

The server is ``workers`` frames served at once, first come first served (a FIFO queue in front of them); a frame
of mode ``m`` takes ``service_ms[m]`` x a log-normal factor (median 1, ``jitter`` its sigma) drawn from one
seeded generator, plus ``network_ms`` each way. ``clients=N``: N closed-loop clients, each sending its next frame
when its reply comes or when it gives up (``give_up_ms``: the frame is ``DEADLINE_EXCEEDED``); ``rate=R``:
Poisson arrivals at R frames/s. Frames are sent over ``[0, seconds)``; a frame's payload is the real encoded
payload of its index (:mod:`~slimsplit.apps.loadtest.payloads`). Nothing here reads a clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from slimsplit.apps.loadtest.payloads import Payloads
from slimsplit.apps.loadtest.sweep import Kind
from slimsplit.errors import ConfigError
from slimsplit.records import DEADLINE_EXCEEDED, OK, FrameRecord, ServerTiming


@dataclass(frozen=True)
class ServerModel:
    """The simulated server: parallel ``workers``, each mode's median service time, jitter and network delay."""

    workers: int = 2
    service_ms: Mapping[str, float] | None = None
    default_service_ms: float = 1.0
    jitter: float = 0.25
    network_ms: float = 0.1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--sim-workers must be >= 1, got {self.workers}")
        if not (math.isfinite(self.default_service_ms) and self.default_service_ms > 0):
            raise ConfigError(f"--sim-server-ms must be > 0, got {self.default_service_ms}")

    def median_ms(self, mode: str) -> float:
        given = (self.service_ms or {}).get(mode, 0.0)
        return given if given > 0 else self.default_service_ms


def simulate_point(
    kind: Kind,
    load: float,
    payloads: Payloads,
    *,
    seconds: float,
    deadline_ms: float,
    give_up_ms: float,
    model: ServerModel,
    seed: int,
) -> list[FrameRecord]:
    """The frames of one point, in the order they were sent."""
    rng = np.random.default_rng(seed)
    free = [0.0] * model.workers  # when each worker is next free (ms), a heap
    heapq.heapify(free)
    arrivals: list[tuple[float, int]] = []  # (send time ms, client)
    end_ms = seconds * 1e3
    if kind == "clients":
        arrivals = [(0.0, c) for c in range(int(load))]
    else:
        gaps = rng.exponential(1e3 / load, size=max(1, math.ceil(load * seconds * 1.5) + 16))
        t = np.cumsum(gaps) - gaps[0]
        arrivals = [(float(x), -1) for x in t if x < end_ms]
    heapq.heapify(arrivals)
    records: list[FrameRecord] = []
    while arrivals:
        sent, client = heapq.heappop(arrivals)
        if sent >= end_ms:
            continue
        i = len(records)
        k = i % len(payloads)
        mode = payloads.modes[k]
        service = model.median_ms(mode) * float(np.exp(model.jitter * rng.standard_normal()))
        arrive = sent + model.network_ms
        start = max(arrive, heapq.heappop(free))
        done = start + service
        heapq.heappush(free, done)
        latency = done + model.network_ms - sent
        timing: ServerTiming | None = ServerTiming(
            queue_ms=start - arrive, tail_ms=service, total_ms=done - arrive, backend="simulated", batch_size=1
        )
        if latency <= give_up_ms:
            status, finished = OK, sent + latency
        else:
            status, finished, latency = DEADLINE_EXCEEDED, sent + give_up_ms, give_up_ms
            timing = None
        records.append(
            FrameRecord(
                frame_id=i,
                index=k,
                mode=mode,
                status=status,
                payload_bytes=payloads.sizes[k],
                rtt_ms=latency if status == OK else math.nan,
                latency_ms=latency if status == OK else math.nan,
                server=timing,
                deadline_ms=deadline_ms,
                t_s=sent / 1e3,
                sent_s=sent / 1e3,
            )
        )
        if client >= 0:
            heapq.heappush(arrivals, (finished, client))
    return records


__all__ = ["ServerModel", "simulate_point"]
