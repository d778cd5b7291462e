"""The host side of slimsplit: the gRPC inference server, its backends, and model training/export (torch).

Serving API (imported on first use, so ``slimsplit.server.models`` does not pull in gRPC and vice versa)::

    from slimsplit.server import ServerConfig, ServerThread, InferenceCore, InferRequest, start_server

* :class:`ServerThread` / :func:`serve_in_thread` - a gRPC server on a background thread (sync callers)
* :func:`start_server` - ``async``: a gRPC server on the running event loop -> :class:`RunningServer`
* :class:`InferenceCore` - the transport-neutral core (``await core.infer(InferRequest(...))``)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slimsplit.protocol import PROTOCOL_VERSION
    from slimsplit.server.app import RunningServer, ServerThread, serve_in_thread, start_server
    from slimsplit.server.config import BackendConfig, BatchingConfig, GrpcConfig, MetricsConfig, ServerConfig
    from slimsplit.server.core import InferenceCore, InferRequest, InferResult

_EXPORTS = {
    "RunningServer": "slimsplit.server.app",
    "ServerThread": "slimsplit.server.app",
    "serve_in_thread": "slimsplit.server.app",
    "start_server": "slimsplit.server.app",
    "BackendConfig": "slimsplit.server.config",
    "BatchingConfig": "slimsplit.server.config",
    "GrpcConfig": "slimsplit.server.config",
    "MetricsConfig": "slimsplit.server.config",
    "ServerConfig": "slimsplit.server.config",
    "PROTOCOL_VERSION": "slimsplit.protocol",
    "InferenceCore": "slimsplit.server.core",
    "InferRequest": "slimsplit.server.core",
    "InferResult": "slimsplit.server.core",
}

__all__ = [
    "PROTOCOL_VERSION",
    "BackendConfig",
    "BatchingConfig",
    "GrpcConfig",
    "InferRequest",
    "InferResult",
    "InferenceCore",
    "MetricsConfig",
    "RunningServer",
    "ServerConfig",
    "ServerThread",
    "serve_in_thread",
    "start_server",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'slimsplit.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
