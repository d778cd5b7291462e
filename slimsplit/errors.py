"""One exception tree for the whole system.

Every error that crosses a module boundary is a :class:`SlimsplitError`. The server maps these to gRPC status
codes in exactly one place (``slimsplit.server.status``) and the edge maps status codes back to these classes in
exactly one place (``slimsplit.edge.status``). Each class carries the gRPC status *name* it maps to, so the
mapping stays a table and both directions agree.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SlimsplitError(Exception):
    """Base of every error slimsplit raises on purpose.

    ``context`` holds structured details (frame id, field name, limit, ...) that adapters may attach to responses.
    """

    grpc_status: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = context

    def __str__(self) -> str:
        return self.message


# --- configuration and artifacts -------------------------------------------------------------------------


class ConfigError(SlimsplitError):
    """A configuration file or flag is invalid."""

    grpc_status = "INVALID_ARGUMENT"


class BundleError(SlimsplitError):
    """A model bundle is missing a file, has the wrong schema version or disagrees with its ONNX files."""

    grpc_status = "FAILED_PRECONDITION"


class DatasetError(SlimsplitError):
    """A data set is missing, empty or corrupt."""

    grpc_status = "FAILED_PRECONDITION"


class SourceError(SlimsplitError):
    """A live frame source (camera, video file, network stream) cannot be opened, or during a run stalled (no
    frame for ``stall_s``) or disappeared (the camera unplugged, the stream dropped, and reconnecting failed);
    ``context``: ``source`` (as given), ``kind`` (``"unavailable"``, ``"stalled"``, ``"disappeared"``). Not a
    :class:`DatasetError` child: the edge's reverse status table ranks a status's classes by their children."""

    grpc_status = "FAILED_PRECONDITION"


class TraceError(SlimsplitError):
    """A bandwidth trace file cannot be parsed (the message names the file and line)."""

    grpc_status = "INVALID_ARGUMENT"


# --- per-frame errors (what a client sent is wrong) -------------------------------------------------------


class InvalidFrame(SlimsplitError):
    """A frame is malformed: bad header, truncated payload, non-finite values, shape that disagrees, ..."""

    grpc_status = "INVALID_ARGUMENT"


class CodecError(InvalidFrame):
    """A feature payload cannot be decoded (bad magic, unsupported version, lying header, truncation)."""


class UnsupportedVersion(InvalidFrame):
    """The peer speaks a protocol or codec version this side does not understand."""

    grpc_status = "FAILED_PRECONDITION"


class UnknownModel(SlimsplitError):
    """No bundle of that name and version is loaded."""

    grpc_status = "NOT_FOUND"


class UnknownMode(SlimsplitError):
    """The model has no such operating mode."""

    grpc_status = "NOT_FOUND"


# --- capacity and availability ---------------------------------------------------------------------------


class Overloaded(SlimsplitError):
    """The server (or a queue) is at capacity; retry later."""

    grpc_status = "RESOURCE_EXHAUSTED"


class MessageTooLarge(SlimsplitError):
    """A request message is larger than the server accepts (``--max-message-bytes``)."""

    grpc_status = "RESOURCE_EXHAUSTED"


class RateLimited(Overloaded):
    """A device is over one of its limits (frames/s, bytes/s, concurrent streams); ``context["retry_after_s"]`` says
    when it would be accepted again. Other devices are not affected."""


class Unavailable(SlimsplitError):
    """The service is shutting down or a backend/device is not reachable."""

    grpc_status = "UNAVAILABLE"


class DeadlineExceeded(SlimsplitError):
    """A frame missed its deadline before it could be served."""

    grpc_status = "DEADLINE_EXCEEDED"


# --- identity and authorization --------------------------------------------------------------------------


class Unauthenticated(SlimsplitError):
    """A call carries no token, a token the server does not know, or a client certificate the server cannot map
    to a device. The message never contains the token."""

    grpc_status = "UNAUTHENTICATED"


class PermissionDenied(SlimsplitError):
    """The device is known but may not do this: it is revoked, the model is not among the ones it may use, or its
    token belongs to another device's certificate."""

    grpc_status = "PERMISSION_DENIED"


class BackendError(SlimsplitError):
    """A backend failed to run (also: required runtime such as pyxrt or a device is missing)."""

    grpc_status = "INTERNAL"


class ResourceLimitError(BackendError):
    """A model does not fit a hardware platform's resources (the message names the resource)."""

    grpc_status = "FAILED_PRECONDITION"


__all__ = [
    "BackendError",
    "BundleError",
    "CodecError",
    "ConfigError",
    "DatasetError",
    "DeadlineExceeded",
    "InvalidFrame",
    "MessageTooLarge",
    "Overloaded",
    "PermissionDenied",
    "RateLimited",
    "ResourceLimitError",
    "SlimsplitError",
    "SourceError",
    "TraceError",
    "Unauthenticated",
    "Unavailable",
    "UnknownMode",
    "UnknownModel",
    "UnsupportedVersion",
]
