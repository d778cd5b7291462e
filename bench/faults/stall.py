"""A backend whose tail sleeps on request: ONNX Runtime tails that wait while a flag file exists.

The server is started with this backend registered as ``stall`` (:data:`bench.faults.server.EXTRA_BACKENDS`) and
the flag file's path in ``SLIMSPLIT_FAULTS_STALL_FILE``; the harness creates the file to stall every tail call
(each waits, in 20 ms steps, until the file is gone or :data:`MAX_STALL_S` passed) and removes it to let them go.
Its runner is never inline-safe: a stalled tail blocks a worker thread, as a hung accelerator would.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle
from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.backends.onnxruntime_backend import OnnxRuntimeBackend
from slimsplit.server.config import BackendConfig

ENV = "SLIMSPLIT_FAULTS_STALL_FILE"
MAX_STALL_S = 60.0


class _StallRunner(TailRunner):
    inline_safe = False

    def __init__(self, inner: TailRunner, flag: Path | None) -> None:
        self._inner = inner
        self._flag = flag

    def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
        if self._flag is not None:
            until = time.monotonic() + MAX_STALL_S
            while self._flag.exists() and time.monotonic() < until:
                time.sleep(0.02)
        return self._inner.run(mode, features)

    def close(self) -> None:
        self._inner.close()


class StallBackend(Backend):
    name = "stall"

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.inner = OnnxRuntimeBackend(config)
        flag = os.environ.get(ENV)
        self.flag = Path(flag) if flag else None

    def load(self, bundle: Bundle) -> TailRunner:
        return _StallRunner(self.inner.load(bundle), self.flag)

    def describe(self) -> dict[str, str]:
        return {**self.inner.describe(), "backend": self.name, "note": f"stalls while {self.flag} exists"}
