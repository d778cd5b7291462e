"""The constants of the wire contract (``protos/slimsplit/v1``) that both sides share."""

from __future__ import annotations

import re
from importlib import metadata

PROTOCOL_VERSION = 1
"""The value every request's ``protocol_version`` must carry (the proto package's major version)."""

SERVICE_NAME = "slimsplit.v1.SplitInference"
"""The gRPC service's full name, as registered for health checking and reflection."""

DEFAULT_PORT = 50051
"""The port a server listens on and an edge dials when none is given."""

MAX_ERROR_MESSAGE_CHARS = 1000
"""The longest error message either side passes on (a longer one, e.g. echoing a huge model name, is cut and ends in
an ellipsis)."""

ERROR_CLASS_KEY = "slimsplit-error-class"
"""Trailing-metadata key of a failed unary call: the :mod:`slimsplit.errors` class name of the error (the stream's
``FrameError.error_class`` carries the same name), so a client can tell errors that share a status apart."""

AUTHORIZATION_KEY = "authorization"
"""Request-metadata key of a device's bearer token (``authorization: Bearer <token>``)."""

RETRY_AFTER_KEY = "slimsplit-retry-after-ms"
"""Trailing-metadata key of a call refused by a per-device limit (``RESOURCE_EXHAUSTED``): milliseconds until it would
be accepted again (a stream's per-frame refusals carry it in ``FrameError.retry_after_ms``)."""


#: Characters never passed on in a message: C0/C1 controls (terminal escape sequences start with ESC), line and
#: paragraph separators and the bidirectional overrides (which reorder what a terminal or log viewer shows).
_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def bound_message(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    """``text`` safe to print and to log: control characters (escape sequences, newlines) replaced by ``?`` and cut
    to ``limit`` characters, the last one an ellipsis when it was cut."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _UNSAFE_CHARS.sub("?", text)


def package_version() -> str:
    """The installed distribution's version (``0+unknown`` when run from a tree that is not installed)."""
    try:
        return metadata.version("slimsplit")
    except metadata.PackageNotFoundError:
        return "0+unknown"
