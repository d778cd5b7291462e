"""A tail that does no work: zero logits, for measuring the serving overhead (gRPC, codec, batching) alone.

``[backend.options] delay_ms = X`` makes every tail call sleep X ms (off the event loop): a slow tail for drain
and overload tests across processes, where no test backend can be injected."""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle
from slimsplit.errors import ConfigError, UnknownMode
from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.config import BackendConfig


class NullTailRunner(TailRunner):
    inline_safe = True

    def __init__(self, modes: frozenset[str], num_classes: int, delay_s: float = 0.0) -> None:
        self._modes = modes
        self._num_classes = num_classes
        self._delay_s = delay_s
        self.inline_safe = delay_s == 0.0

    def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
        if mode not in self._modes:
            raise UnknownMode(f"mode {mode!r} is not loaded on this runner", mode=mode)
        if self._delay_s:
            time.sleep(self._delay_s)
        return TailOutput(logits=np.zeros((features.shape[0], self._num_classes), dtype=np.float32))


class NullBackend(Backend):
    """Every frame gets uniform scores (class 0 first); only useful for overhead benchmarks and tests."""

    name = "null"

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig(name="null")

    def load(self, bundle: Bundle) -> TailRunner:
        m = bundle.manifest
        delay_ms = self.config.options.get("delay_ms", 0)
        if not isinstance(delay_ms, int | float) or isinstance(delay_ms, bool) or not 0 <= delay_ms <= 60_000:
            raise ConfigError(
                "backend.options.delay_ms: must be a number in [0, 60000]", key="backend.options.delay_ms"
            )
        return NullTailRunner(frozenset(m.mode_names), len(m.classes), delay_ms / 1000.0)

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "note": "zero logits; serving overhead only"}
