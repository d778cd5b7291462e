"""A tail that does no work: zero logits, for measuring the serving overhead (gRPC, codec, batching) alone."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle
from slimsplit.errors import UnknownMode
from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.config import BackendConfig


class NullTailRunner(TailRunner):
    inline_safe = True

    def __init__(self, modes: frozenset[str], num_classes: int) -> None:
        self._modes = modes
        self._num_classes = num_classes

    def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
        if mode not in self._modes:
            raise UnknownMode(f"mode {mode!r} is not loaded on this runner", mode=mode)
        return TailOutput(logits=np.zeros((features.shape[0], self._num_classes), dtype=np.float32))


class NullBackend(Backend):
    """Every frame gets uniform scores (class 0 first); only useful for overhead benchmarks and tests."""

    name = "null"

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig(name="null")

    def load(self, bundle: Bundle) -> TailRunner:
        m = bundle.manifest
        return NullTailRunner(frozenset(m.mode_names), len(m.classes))

    def describe(self) -> dict[str, str]:
        return {"backend": self.name, "note": "zero logits; serving overhead only"}
