"""Backends with controllable behaviour for server tests (a gate that holds tails, one that fails) and a zero-cost
server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle
from slimsplit.server.app import ServerThread
from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.backends.null_backend import NullBackend
from slimsplit.server.backends.onnxruntime_backend import OnnxRuntimeBackend
from slimsplit.server.config import GrpcConfig, ServerConfig


class _GateRunner(TailRunner):
    def __init__(self, inner: TailRunner, backend: GateBackend) -> None:
        self._inner = inner
        self._backend = backend

    def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
        b = self._backend
        with b.lock:
            b.waiting += len(features)
            b.batch_sizes.append(len(features))
        try:
            if not b.gate.wait(b.max_hold_s):
                raise TimeoutError("test gate was never opened")
        finally:
            with b.lock:
                b.waiting -= len(features)
        if b.fail_with is not None:
            raise b.fail_with
        return self._inner.run(mode, features)

    def close(self) -> None:
        self._inner.close()


class GateBackend(Backend):
    """ONNX Runtime tails that wait until ``gate`` is set (open by default); records batch sizes."""

    name = "gate"

    def __init__(self, *, open_: bool = True, max_hold_s: float = 20.0) -> None:
        self.inner = OnnxRuntimeBackend()
        self.gate = threading.Event()
        if open_:
            self.gate.set()
        self.max_hold_s = max_hold_s
        self.lock = threading.Lock()
        self.waiting = 0
        self.batch_sizes: list[int] = []
        self.fail_with: BaseException | None = None

    def load(self, bundle: Bundle) -> TailRunner:
        return _GateRunner(self.inner.load(bundle), self)

    def describe(self) -> dict[str, str]:
        return {"backend": self.name}


@contextmanager
def null_server() -> Iterator[ServerThread]:
    """The shipped bundle with zero-cost tails on a free loopback port, stopped at the end."""
    srv = ServerThread(ServerConfig(grpc=GrpcConfig(port=0, grace_s=0.2), log_level="warning"), backend=NullBackend())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(grace=0.2)
