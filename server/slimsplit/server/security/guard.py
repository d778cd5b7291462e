"""Who may call the server, and how much: the transport-neutral policy behind the gRPC interceptor.

:class:`Guard` answers one question per call, :meth:`Guard.authenticate`: which device is this (a
:class:`DeviceState`), given the bearer token the call carries and the device named by its client certificate
(mTLS)? The rules, in order:

* with a devices file, a token is required (none: ``Unauthenticated``) and must be a device's (``Unauthenticated``);
  with mTLS it must be the token of the certificate's device (``Unauthenticated``); a revoked device gets
  ``PermissionDenied``;
* with mTLS and no devices file, the certificate's device is the identity (a certificate that names none:
  ``Unauthenticated``).

Per frame, :meth:`DeviceState.admit` checks the model against the device's allowed models (``PermissionDenied``)
and its frames/s and bytes/s buckets (``RateLimited`` with a retry hint); :meth:`Guard.open_stream` counts a
device's open streams against its limit. :meth:`Guard.reload` reads the devices file again: devices that stay valid
keep their streams and buckets (with any new limits); the open streams of a device that was revoked, removed or
given a new token are ended (each stream's ``end`` callback). Every failure is counted in the metrics and written to
the rate-limited audit log; no token is ever logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from slimsplit.errors import ConfigError, PermissionDenied, RateLimited, SlimsplitError, Unauthenticated
from slimsplit.server.config import AuthConfig
from slimsplit.server.metrics import DeviceMetrics, ServerMetrics
from slimsplit.server.security.audit import AuditLog
from slimsplit.server.security.devices import DeviceEntry, DeviceTable, load_devices
from slimsplit.server.security.limits import Limits, RateLimiter
from slimsplit.server.token_bucket import Clock

log = logging.getLogger("slimsplit.server")

#: The metrics label shared by devices beyond ``auth.max_device_labels``.
OTHER_LABEL = "_other"

End = Callable[[SlimsplitError], None]


class StreamTicket:
    """An open stream of a device; :meth:`close` when it ends. ``end`` is called when the device loses its right to
    the stream (revoked, removed, new token)."""

    __slots__ = ("end", "state")

    def __init__(self, state: DeviceState, end: End) -> None:
        self.state = state
        self.end = end

    def close(self) -> None:
        if self in self.state.streams:
            self.state.streams.discard(self)
            if self.state.metrics is not None:
                self.state.metrics.streams.dec()


@dataclass(eq=False)
class DeviceState:
    """One device as the server knows it now: its devices-file entry (None: an mTLS identity with no devices
    file), its rate limiter, its open streams and its metrics."""

    device_id: str
    entry: DeviceEntry | None
    limiter: RateLimiter
    metrics: DeviceMetrics | None = None
    streams: set[StreamTicket] = field(default_factory=set)
    ended: SlimsplitError | None = None

    def admit(self, model: str, nbytes: int) -> None:
        """May this device send a frame of ``model`` with ``nbytes`` of features now? ``PermissionDenied`` or
        ``RateLimited`` if not."""
        if self.ended is not None:
            raise self.ended
        entry = self.entry
        if entry is not None and not entry.allows_model(model):
            raise PermissionDenied(
                f"device {self.device_id!r} may not use model {model[:100]!r} (allowed: {', '.join(entry.models)})",
                device=self.device_id,
            )
        self.limiter.admit(self.device_id, nbytes)
        if self.metrics is not None:
            self.metrics.bytes.inc(nbytes)

    def admit_bytes(self, nbytes: int) -> None:
        """May this device send ``nbytes`` more of a frame it opened (a plane)? ``RateLimited`` if not."""
        if self.ended is not None:
            raise self.ended
        self.limiter.admit_bytes(self.device_id, nbytes)
        if self.metrics is not None:
            self.metrics.bytes.inc(nbytes)

    def count(self, status: str) -> None:
        """A frame of this device answered with ``status`` (``"OK"``, a status name)."""
        if self.metrics is not None:
            self.metrics.frame(status)


@dataclass(frozen=True)
class _FileStamp:
    mtime_ns: int
    size: int
    inode: int


def _stamp(path: Path) -> _FileStamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)


class Guard:
    """The authentication, authorization and limits of one server (see the module docstring)."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        mtls: bool,
        metrics: ServerMetrics | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.mtls = mtls
        self.metrics = metrics
        self.audit = AuditLog(config.audit_lines_per_s, config.audit_burst)
        self.table: DeviceTable = DeviceTable.empty()
        self._clock = clock
        self._states: dict[str, DeviceState] = {}
        self._labels: set[str] = set()
        self._stamp: _FileStamp | None = None
        self.reloads = 0

    @property
    def devices_file(self) -> Path | None:
        return self.config.devices_file

    # ------------------------------------------------------------------------------------------ the devices file
    def load(self) -> None:
        """Read the devices file at start-up (:class:`ConfigError` naming the file and key when it is bad)."""
        path = self.devices_file
        if path is None:
            return
        self._stamp = _stamp(path)
        self.table = load_devices(path)
        log.info("devices file %s: %d device(s)", path, len(self.table))

    def changed(self) -> bool:
        """Whether the devices file changed on disk since it was last read."""
        path = self.devices_file
        return path is not None and _stamp(path) != self._stamp

    async def reload(self) -> bool:
        """Read the devices file again and apply it (see the module docstring). A file that cannot be read or is
        bad is logged and the devices known before stay as they were. True when the new file was applied."""
        path = self.devices_file
        if path is None:
            return False
        stamp = _stamp(path)
        try:
            table = await asyncio.to_thread(load_devices, path)
        except ConfigError as exc:
            self._stamp = stamp  # do not retry the same bad file every poll; a change is tried again
            log.error("devices file not reloaded, the previous one stays in force: %s", exc)
            if self.metrics is not None:
                self.metrics.reloads.labels("error").inc()
            return False
        self._stamp = stamp
        self.apply(table)
        return True

    def apply(self, table: DeviceTable) -> None:
        """Make ``table`` the devices in force; end what it no longer allows."""
        self.table = table
        self.reloads += 1
        ended = 0
        for device_id, state in list(self._states.items()):
            old = state.entry
            if old is None:
                continue  # an mTLS identity: the devices file does not govern it
            new = table.get(device_id)
            why: SlimsplitError | None = None
            if new is None:
                why = PermissionDenied(f"device {device_id!r} was removed from the devices file", device=device_id)
            elif new.revoked:
                why = PermissionDenied(f"device {device_id!r} was revoked", device=device_id)
            elif new.token_sha256 != old.token_sha256:
                why = Unauthenticated(
                    f"the token of device {device_id!r} was replaced: connect with the new one", device=device_id
                )
            if why is None:
                assert new is not None
                state.entry = new
                state.limiter.update(self._limits(new))
                continue
            ended += len(state.streams)
            self._end(state, why)
        if self.metrics is not None:
            self.metrics.reloads.labels("ok").inc()
        log.info("devices file %s reloaded: %d device(s); %d stream(s) ended", self.devices_file, len(table), ended)

    def _end(self, state: DeviceState, why: SlimsplitError) -> None:
        state.ended = why
        del self._states[state.device_id]
        for ticket in list(state.streams):
            ticket.close()
            ticket.end(why)

    # ------------------------------------------------------------------------------------------ per call
    def _limits(self, entry: DeviceEntry | None) -> Limits:
        cfg = self.config
        own = entry.limits if entry is not None else None

        def pick(value: float | int | None, default: float | int) -> float:
            return float(default if value is None else value)

        return Limits(
            frames_per_s=pick(own.frames_per_s if own else None, cfg.frames_per_s),
            bytes_per_s=pick(own.bytes_per_s if own else None, cfg.bytes_per_s),
            max_streams=int(pick(own.max_streams if own else None, cfg.max_streams)),
        )

    def _state(self, device_id: str, entry: DeviceEntry | None) -> DeviceState:
        state = self._states.get(device_id)
        if state is None:
            metrics = None
            if self.metrics is not None:
                label = device_id
                if label not in self._labels:
                    if len(self._labels) < self.config.max_device_labels:
                        self._labels.add(label)
                    else:
                        label = OTHER_LABEL
                metrics = self.metrics.device(label)
            limiter = RateLimiter(self._limits(entry), self.config.burst_s, self._clock)
            state = DeviceState(device_id, entry, limiter, metrics)
            self._states[device_id] = state
        return state

    def _fail(self, exc: SlimsplitError, reason: str, method: str, peer: str, device: str | None) -> SlimsplitError:
        self.audit.failure(reason, method=method, peer=peer, device=device)
        if self.metrics is not None:
            self.metrics.auth_failures.labels(reason).inc()
        return exc

    def authenticate(self, token: str | None, cert_device: str | None, *, method: str, peer: str) -> DeviceState:
        """The device making a call (see the module docstring); raises ``Unauthenticated`` or
        ``PermissionDenied`` after auditing the failure."""
        if self.devices_file is None:
            if cert_device is None:
                raise self._fail(
                    Unauthenticated("the client certificate names no device (no SAN URI slimsplit://device/ID, no CN)"),
                    "no_device_in_certificate",
                    method,
                    peer,
                    None,
                )
            return self._state(cert_device, None)
        if not token:
            raise self._fail(
                Unauthenticated("this server needs a device token (metadata 'authorization: Bearer <token>')"),
                "missing_token",
                method,
                peer,
                cert_device,
            )
        entry = self.table.lookup_token(token)
        if entry is None:
            raise self._fail(
                Unauthenticated("the device token is not valid (unknown, or replaced by a newer one)"),
                "bad_token",
                method,
                peer,
                cert_device,
            )
        if self.mtls and cert_device != entry.device_id:
            raise self._fail(
                Unauthenticated(
                    f"the token does not belong to the device of the client certificate ({cert_device!r})",
                    device=cert_device,
                ),
                "token_of_another_device",
                method,
                peer,
                cert_device,
            )
        if entry.revoked:
            raise self._fail(
                PermissionDenied(f"device {entry.device_id!r} is revoked", device=entry.device_id),
                "revoked",
                method,
                peer,
                entry.device_id,
            )
        state = self._state(entry.device_id, entry)
        if state.entry is not entry:  # the same device, a state from an earlier table: take the current entry
            state.entry = entry
        return state

    def open_stream(self, state: DeviceState, end: End) -> StreamTicket:
        """Register a stream of ``state``'s device, within its concurrent-stream limit (``RateLimited`` beyond)."""
        if state.ended is not None:
            raise state.ended
        limit = state.limiter.limits.max_streams
        if limit and len(state.streams) >= limit:
            raise RateLimited(
                f"device {state.device_id!r} already has {len(state.streams)} stream(s) open, its limit: close one "
                "or retry later",
                device=state.device_id,
                retry_after_s=1.0,
            )
        ticket = StreamTicket(state, end)
        state.streams.add(ticket)
        if state.metrics is not None:
            state.metrics.streams.inc()
        return ticket

    def device(self, device_id: str) -> DeviceState | None:
        """The state of a device that has called since it was last (re)admitted; None otherwise."""
        return self._states.get(device_id)


__all__ = ["OTHER_LABEL", "DeviceState", "End", "Guard", "StreamTicket"]
