"""Rate-limited warnings and errors: a flood of bad requests cannot turn into a flood of log lines.

:class:`LogRateLimit` is a :class:`logging.Filter` the running server puts on its loggers (``slimsplit.server`` and
gRPC's own) while it runs: records at WARNING and above pass at most ``lines_per_s`` per second (``burst`` at once);
the rest are dropped and counted (``slimsplit_log_lines_dropped_total``), and the next line that passes says how many
were dropped before it. DEBUG and INFO records are not limited (they are off in production).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from slimsplit.server.token_bucket import TokenBucket

#: The loggers a server limits: its own and the one gRPC's Python layer reports handler failures on.
LIMITED_LOGGERS: tuple[str, ...] = ("slimsplit.server", "grpc._cython.cygrpc")


class LogRateLimit(logging.Filter):
    """See the module docstring. Thread-safe (tails log from executor threads)."""

    def __init__(self, lines_per_s: float, burst: int, on_drop: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._bucket = TokenBucket(lines_per_s, float(burst))
        self._lock = threading.Lock()
        self._on_drop = on_drop
        self.dropped = 0
        self._pending = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        with self._lock:
            if self._bucket.take(1.0) > 0:
                self.dropped += 1
                self._pending += 1
                drop = True
            else:
                drop = False
                pending, self._pending = self._pending, 0
        if drop:
            if self._on_drop is not None:
                self._on_drop()
            return False
        if pending:
            record.msg = f"{record.getMessage()} ({pending} similar lines dropped before this one)"
            record.args = None
        return True

    def attach(self, names: Sequence[str] = LIMITED_LOGGERS) -> None:
        for name in names:
            logging.getLogger(name).addFilter(self)

    def detach(self, names: Sequence[str] = LIMITED_LOGGERS) -> None:
        for name in names:
            logging.getLogger(name).removeFilter(self)


__all__ = ["LIMITED_LOGGERS", "LogRateLimit"]
