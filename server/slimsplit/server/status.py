"""The one place where exceptions become gRPC status codes (the edge maps them back in
``slimsplit.edge.status``).

Every :class:`~slimsplit.errors.SlimsplitError` names its status in ``grpc_status``; anything else is a bug
and becomes ``INTERNAL`` with the traceback logged under a short reference the client sees, never a crash.

Besides the status, a client gets the error's class name from :mod:`slimsplit.errors` (``FrameError.error_class``
in a stream, the trailing metadata key :data:`~slimsplit.protocol.ERROR_CLASS_KEY` of a failed unary call), so it
can tell errors of one status apart (``UnknownModel`` from ``UnknownMode``: both ``NOT_FOUND``). Messages may echo
what the client sent (a model or mode name); they are cut to
:data:`~slimsplit.protocol.MAX_ERROR_MESSAGE_CHARS`.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import dataclass
from typing import NoReturn

import grpc
import grpc.aio

from slimsplit import errors
from slimsplit.errors import SlimsplitError
from slimsplit.protocol import ERROR_CLASS_KEY, RETRY_AFTER_KEY, bound_message
from slimsplit.v1 import slimsplit_pb2 as pb

log = logging.getLogger("slimsplit.server")


@dataclass(frozen=True)
class StatusInfo:
    """What a client receives for an error: the status, the message and the error's class name ('' = none)."""

    code: grpc.StatusCode
    message: str
    error_class: str = ""
    retry_after_ms: int = 0  # a per-device limit's hint (RateLimited); 0 = none

    @property
    def name(self) -> str:
        return str(self.code.name)

    @property
    def number(self) -> int:
        value = self.code.value
        return int(value[0])


def status_code(name: str) -> grpc.StatusCode:
    """``grpc.StatusCode`` from its name (``"INVALID_ARGUMENT"``); unknown names are INTERNAL."""
    code: grpc.StatusCode = getattr(grpc.StatusCode, name, grpc.StatusCode.INTERNAL)
    return code


def error_class_name(exc: SlimsplitError) -> str:
    """The name of the nearest class of ``exc`` defined in :mod:`slimsplit.errors` (a subclass defined elsewhere,
    e.g. by a backend, travels as the public class it derives from): the names a client can know."""
    for cls in type(exc).__mro__:
        if cls.__module__ == errors.__name__ and issubclass(cls, SlimsplitError):
            return cls.__name__
    return SlimsplitError.__name__  # pragma: no cover - every SlimsplitError derives from the base


def status_for(exc: BaseException) -> StatusInfo:
    """The status a client receives for ``exc``. Unexpected exceptions are logged with their traceback."""
    if isinstance(exc, SlimsplitError):
        retry = exc.context.get("retry_after_s")
        retry_ms = max(1, math.ceil(retry * 1000)) if isinstance(retry, int | float) and retry > 0 else 0
        info = StatusInfo(
            status_code(exc.grpc_status), bound_message(exc.message), error_class_name(exc), min(retry_ms, 2**31)
        )
        if info.code == grpc.StatusCode.INTERNAL:  # a server-side failure (e.g. BackendError), not a bad frame
            log.error("%s: %s", type(exc).__name__, exc.message, exc_info=exc)
        return info
    ref = secrets.token_hex(4)
    log.error("internal error %s while serving a request", ref, exc_info=exc)
    return StatusInfo(grpc.StatusCode.INTERNAL, f"internal server error ({type(exc).__name__}, log ref {ref})")


def frame_error(frame_id: int, exc: BaseException) -> pb.FrameError:
    """The in-stream error reply for one frame."""
    info = status_for(exc)
    return pb.FrameError(
        frame_id=frame_id,
        code=info.number,
        status=info.name,
        message=info.message,
        error_class=info.error_class,
        retry_after_ms=info.retry_after_ms,
    )


def trailing_metadata(info: StatusInfo) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a failed call: the error's class and, for a per-device limit, the retry hint."""
    out: list[tuple[str, str]] = []
    if info.error_class:
        out.append((ERROR_CLASS_KEY, info.error_class))
    if info.retry_after_ms:
        out.append((RETRY_AFTER_KEY, str(info.retry_after_ms)))
    return tuple(out)


async def abort(context: grpc.aio.ServicerContext[object, object], exc: BaseException) -> NoReturn:
    """End a unary call with the status that ``exc`` maps to (and its class in the trailing metadata)."""
    info = status_for(exc)
    await context.abort(info.code, info.message, trailing_metadata(info))
