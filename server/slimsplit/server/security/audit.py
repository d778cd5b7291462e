"""The audit log: one line per authentication or authorization failure, rate-limited so a flood of bad clients
cannot flood the log.

Lines go to the logger ``slimsplit.audit`` at WARNING::

    auth failure: reason=bad_token method=/slimsplit.v1.SplitInference/InferStream peer=ipv4:10.0.0.7:50122 device=-

``device`` is the identity the caller presented (its certificate's device, else the device of a known token), never
a token. Beyond ``lines_per_s`` (``burst`` at once) lines are dropped and counted; the next line that is written says
how many were dropped before it.
"""

from __future__ import annotations

import logging
import re
import time

from slimsplit.server.token_bucket import Clock, TokenBucket

log = logging.getLogger("slimsplit.audit")

_UNSAFE = re.compile(r"[^A-Za-z0-9._:/\[\]@-]")
_MAX_FIELD = 200


def _field(value: str) -> str:
    """A log field: characters that could forge a line or a field replaced, cut to a bounded length."""
    text = _UNSAFE.sub("?", value)[:_MAX_FIELD]
    return text or "-"


class AuditLog:
    """Rate-limited audit lines (see the module docstring)."""

    def __init__(self, lines_per_s: float, burst: int, clock: Clock | None = None) -> None:
        self._bucket = TokenBucket(lines_per_s, float(burst), clock or time.monotonic)
        self.dropped = 0
        self.written = 0

    def failure(self, reason: str, *, method: str, peer: str, device: str | None) -> None:
        """Record one failure (``reason``: a short word such as ``missing_token``)."""
        if self._bucket.take(1.0) > 0:
            self.dropped += 1
            return
        suffix = f" ({self.dropped} similar lines dropped before this one)" if self.dropped else ""
        self.dropped = 0
        self.written += 1
        log.warning(
            "auth failure: reason=%s method=%s peer=%s device=%s%s",
            _field(reason),
            _field(method),
            _field(peer),
            _field(device or ""),
            suffix,
        )


__all__ = ["AuditLog"]
