"""The one place where exceptions become gRPC status codes (the edge maps them back in
``slimsplit.edge.status``).

Every :class:`~slimsplit.errors.SlimsplitError` names its status in ``grpc_status``; anything else is a bug
and becomes ``INTERNAL`` with the traceback logged under a short reference the client sees, never a crash.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import NoReturn

import grpc
import grpc.aio

from slimsplit.errors import SlimsplitError
from slimsplit.v1 import slimsplit_pb2 as pb

log = logging.getLogger("slimsplit.server")


@dataclass(frozen=True)
class StatusInfo:
    code: grpc.StatusCode
    message: str

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


def status_for(exc: BaseException) -> StatusInfo:
    """The status a client receives for ``exc``. Unexpected exceptions are logged with their traceback."""
    if isinstance(exc, SlimsplitError):
        info = StatusInfo(status_code(exc.grpc_status), exc.message)
        if info.code == grpc.StatusCode.INTERNAL:  # a server-side failure (e.g. BackendError), not a bad frame
            log.error("%s: %s", type(exc).__name__, exc.message, exc_info=exc)
        return info
    ref = secrets.token_hex(4)
    log.error("internal error %s while serving a request", ref, exc_info=exc)
    return StatusInfo(grpc.StatusCode.INTERNAL, f"internal server error ({type(exc).__name__}, log ref {ref})")


def frame_error(frame_id: int, exc: BaseException) -> pb.FrameError:
    """The in-stream error reply for one frame."""
    info = status_for(exc)
    return pb.FrameError(frame_id=frame_id, code=info.number, status=info.name, message=info.message)


async def abort(context: grpc.aio.ServicerContext[object, object], exc: BaseException) -> NoReturn:
    """End a unary call with the status that ``exc`` maps to."""
    info = status_for(exc)
    await context.abort(info.code, info.message)
