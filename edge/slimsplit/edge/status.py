"""gRPC status codes back to :mod:`slimsplit.errors` classes: the edge's one place for this mapping.

Every error class names the gRPC status it travels as (``grpc_status``); the server maps exceptions to those
statuses in ``slimsplit.server.status``. This module builds the reverse table *from those same attributes*, so
the two directions cannot drift apart.

The server also names the error's class: ``FrameError.error_class`` in a stream, the trailing metadata key
:data:`~slimsplit.protocol.ERROR_CLASS_KEY` of a failed unary call. When that class exists here and really travels
as the received status it is the class raised, so an unknown model (``UnknownModel``) and an unknown mode
(``UnknownMode``) are told apart although both are ``NOT_FOUND``. Without it (a server that does not send it, or a
status from gRPC itself) the edge picks the most general class of the status (the one most of the others derive
from; ties go to a per-frame error, i.e. an ``InvalidFrame``, then to the class defined first).

A refusal by a per-device limit carries a retry hint (``FrameError.retry_after_ms``, the trailing metadata key
:data:`~slimsplit.protocol.RETRY_AFTER_KEY` of a unary call): it becomes ``context["retry_after_s"]`` (seconds), and
a ``RESOURCE_EXHAUSTED`` with a hint but no class name is a :class:`~slimsplit.errors.RateLimited`.
:func:`refusal` says whether an error is the server refusing this device itself (``UNAUTHENTICATED``,
``PERMISSION_DENIED``), which no retry or reconnection can fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc

from slimsplit import errors
from slimsplit.edge.replies import invalid_reply, printable
from slimsplit.errors import SlimsplitError
from slimsplit.protocol import ERROR_CLASS_KEY, RETRY_AFTER_KEY
from slimsplit.v1 import slimsplit_pb2 as pb


def _error_classes() -> list[type[SlimsplitError]]:
    """Every public class of the exception tree, in definition order."""
    classes: list[type[SlimsplitError]] = []
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, SlimsplitError) and obj.__module__ == errors.__name__:
            classes.append(obj)
    return classes


def _build_reverse_table(classes: Iterable[type[SlimsplitError]]) -> dict[str, type[SlimsplitError]]:
    by_status: dict[str, list[type[SlimsplitError]]] = {}
    for cls in classes:
        if cls is SlimsplitError:
            continue
        by_status.setdefault(cls.grpc_status, []).append(cls)
    table: dict[str, type[SlimsplitError]] = {}
    for status, candidates in by_status.items():
        # most general first (how many candidates derive from it), then per-frame errors (what travels on the
        # wire), then definition order (the sort is stable)
        ranked = sorted(
            candidates,
            key=lambda c: (-sum(issubclass(o, c) for o in candidates), not issubclass(c, errors.InvalidFrame)),
        )
        table[status] = ranked[0]
    return table


_CLASSES: tuple[type[SlimsplitError], ...] = tuple(_error_classes())
_BY_NAME: Mapping[str, type[SlimsplitError]] = {c.__name__: c for c in _CLASSES}
#: status name (``"INVALID_ARGUMENT"``) -> the class the edge raises for it.
REVERSE_TABLE: Mapping[str, type[SlimsplitError]] = _build_reverse_table(_CLASSES)
_CODE_BY_NAME: Mapping[str, grpc.StatusCode] = {c.name: c for c in grpc.StatusCode}
_CODE_BY_VALUE: Mapping[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def status_name(code: grpc.StatusCode | int | str) -> str:
    """The canonical name (``"NOT_FOUND"``) of a status given as enum, integer value or name."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        found = _CODE_BY_VALUE.get(code)
        return found.name if found is not None else "UNKNOWN"
    name = code.strip().upper()
    return name if name in _CODE_BY_NAME else "UNKNOWN"


def error_class(code: grpc.StatusCode | int | str, class_name: str | None = None) -> type[SlimsplitError]:
    """The exception class for a status; ``class_name`` (from the server) narrows it when it is consistent."""
    name = status_name(code)
    if class_name:
        exact = _BY_NAME.get(class_name)
        if exact is not None and exact.grpc_status == name:
            return exact
    return REVERSE_TABLE.get(name, SlimsplitError)


def error_from_status(
    code: grpc.StatusCode | int | str,
    message: str,
    *,
    class_name: str | None = None,
    retry_after_ms: int | None = None,
    **context: object,
) -> SlimsplitError:
    """Build the exception for a status received from the server (``context`` gets ``status`` added, and
    ``retry_after_s`` for a positive ``retry_after_ms``; a message longer than
    :data:`~slimsplit.protocol.MAX_ERROR_MESSAGE_CHARS` is cut and its control characters are shown escaped:
    replies are untrusted input too). An error with status ``OK`` is no error but an invalid reply
    (:func:`~slimsplit.edge.replies.invalid_reply`): it must never count as an answer."""
    name = status_name(code)
    if name == "OK":
        return invalid_reply(f"the server sent an error with status OK: {message}", **context)
    cls = error_class(name, class_name)
    if retry_after_ms is not None and retry_after_ms > 0:
        context["retry_after_s"] = retry_after_ms / 1e3
        if cls is REVERSE_TABLE.get(name) and issubclass(errors.RateLimited, cls) and not class_name:
            cls = errors.RateLimited
    return cls(printable(message or name), status=name, **context)


def error_from_frame_error(error: pb.FrameError, **context: object) -> SlimsplitError:
    """The exception of a stream's per-frame error reply (its status name, else its numeric code)."""
    code: str | int = error.status or error.code
    return error_from_status(
        code,
        error.message,
        class_name=error.error_class or None,
        retry_after_ms=error.retry_after_ms or None,
        **context,
    )


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _retry_after_ms(value: str | bytes) -> int | None:
    """The retry hint of a trailing-metadata value (milliseconds; ``None`` when it is not a number >= 0)."""
    text = _text(value).strip()
    if not text.isdigit() or len(text) > 12:
        return None
    return int(text)


def error_from_rpc(exc: grpc.RpcError, **context: object) -> SlimsplitError:
    """Translate a failed call (sync or ``grpc.aio``) into the exception tree."""
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    trailing_fn = getattr(exc, "trailing_metadata", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = details_fn() if callable(details_fn) else str(exc)
    class_name: str | None = None
    retry_after_ms: int | None = None
    trailing = trailing_fn() if callable(trailing_fn) else None
    if trailing:
        for key, value in trailing:
            if key == ERROR_CLASS_KEY:
                class_name = _text(value)
            elif key == RETRY_AFTER_KEY:
                retry_after_ms = _retry_after_ms(value)
    return error_from_status(
        code or grpc.StatusCode.UNKNOWN, details or "", class_name=class_name, retry_after_ms=retry_after_ms, **context
    )


def refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing this device: ``UNAUTHENTICATED`` (no token, an unknown one, a
    certificate it cannot map to a device) or ``PERMISSION_DENIED`` (revoked, a model it may not use)."""
    return isinstance(exc, errors.Unauthenticated | errors.PermissionDenied) or (
        isinstance(exc, SlimsplitError) and status_of(exc) in ("UNAUTHENTICATED", "PERMISSION_DENIED")
    )


def refused(exc: SlimsplitError, target: str) -> SlimsplitError:
    """``exc`` (a :func:`refusal`) restated as the one line a CLI prints: who refused what, and why (once: an error
    restated already is returned as it is)."""
    if exc.context.get("refused"):
        return exc
    status = status_of(exc)
    if status == "UNAUTHENTICATED":
        what = "the server at {target} refused this device's credentials (its token, or its certificate)"
        hint = "check --token-file / [auth] token_file, and that the device is in the server's devices file"
    else:
        what = "the server at {target} refused this device"
        hint = "the device is revoked, or may not use this model (slimsplit-certs devices on the server's side)"
    message = f"{what.format(target=target)}: {status}: {exc} ({hint})"
    return type(exc)(message, **{**exc.context, "refused": True})


def restated(exc: SlimsplitError, message: str) -> SlimsplitError:
    """An exception of the same class, status and context as ``exc`` with another message."""
    return type(exc)(message, **exc.context)


def status_of(exc: BaseException) -> str:
    """The status name an exception stands for (``"INTERNAL"`` for anything outside the tree)."""
    status = getattr(exc, "context", {}).get("status") if isinstance(exc, SlimsplitError) else None
    if isinstance(status, str):
        return status
    if isinstance(exc, SlimsplitError):
        return exc.grpc_status
    return "INTERNAL"


__all__ = [
    "REVERSE_TABLE",
    "error_class",
    "error_from_frame_error",
    "error_from_rpc",
    "error_from_status",
    "refusal",
    "refused",
    "restated",
    "status_name",
    "status_of",
]
