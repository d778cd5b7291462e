"""The one small interface every tail backend implements.

A :class:`Backend` turns a :class:`~slimsplit.bundle.Bundle` into a :class:`TailRunner` that runs the model tail
(bottleneck decoder + rest of the backbone) for one operating mode on a batch of *dequantized* features.
ONNX Runtime, PyTorch, the InTAR FPGA emulator and the real-device (XRT) driver all sit behind it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle


@dataclass(frozen=True)
class TailOutput:
    """Result of one tail batch.

    ``logits``: float32 [N, num_classes]. ``device_cycles``/``device_ms``: accelerator cycles and time for the
    batch (modelled by the FPGA emulator, read from the kernel's counter on a real board); None for CPU/GPU.
    """

    logits: npt.NDArray[np.float32]
    device_cycles: int | None = None
    device_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class TailRunner(ABC):
    """One bundle loaded on one backend; thread-safe for concurrent ``run`` calls unless stated otherwise."""

    #: True when ``run`` is plain CPU work that never waits on a device, I/O or a long-held lock, so the server may call
    #: it directly on its event loop for a cheap tail (``BatchingConfig.inline_tail_max_us``). False (the
    #: default) keeps every call on the executor.
    inline_safe: bool = False

    @abstractmethod
    def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
        """Run the tail of ``mode`` on features [N, width, H, W] (float32). Raises UnknownMode/BackendError."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, devices and buffers."""


class Backend(ABC):
    """A kind of execution engine for tails (``onnxruntime``, ``torch``, ``fpga-emu``, ``fpga``)."""

    name: str = "abstract"

    @abstractmethod
    def load(self, bundle: Bundle) -> TailRunner:
        """Prepare every mode of ``bundle``; raise BundleError/BackendError with a clear message on failure."""

    @abstractmethod
    def describe(self) -> dict[str, str]:
        """Human-readable facts: device, providers, versions (for ``Describe`` and logs)."""
