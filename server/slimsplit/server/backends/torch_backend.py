"""PyTorch tails: the bundle's ``model.pt`` checkpoint run with ``SplitModel.tail_forward`` (CPU or CUDA).

torch is imported only when this backend is created, so the rest of the server does not pay for it.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle
from slimsplit.errors import BackendError, BundleError, UnknownMode
from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.config import BackendConfig


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendError("the torch backend needs PyTorch: pip install 'slimsplit[server]'") from exc
    return torch


class TorchTailRunner(TailRunner):
    """One loaded split model; ``run`` is serialised by a lock (a torch module is not re-entrant on CUDA)."""

    def __init__(self, model: Any, device: Any, mode_widths: dict[str, int]) -> None:
        self._torch = _torch()
        self._model = model
        self._device = device
        self._mode_widths = dict(mode_widths)
        self._lock = threading.Lock()

    def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
        width = self._mode_widths.get(mode)
        if width is None:
            raise UnknownMode(f"mode {mode!r} is not loaded on this runner", mode=mode)
        if self._model is None:
            raise BackendError("the torch runner is closed")
        torch = self._torch
        try:
            with self._lock, torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self._device)
                logits = self._model.tail_forward(x, width)
                out = logits.float().cpu().numpy()
        except Exception as exc:
            raise BackendError(f"torch tail failed on mode {mode!r}: {exc}", mode=mode) from exc
        return TailOutput(logits=np.asarray(out, dtype=np.float32))

    def close(self) -> None:
        self._model = None


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig(name="torch")
        torch = _torch()
        self._torch = torch
        cuda = bool(torch.cuda.is_available())
        if self.config.device == "cuda" and not cuda:
            raise BackendError("device 'cuda' was requested but torch sees no CUDA device; use 'cpu' or 'auto'")
        self.device = torch.device("cuda" if self.config.device != "cpu" and cuda else "cpu")
        if self.config.intra_op_threads > 0:
            # Process-wide in torch; only touched when the configuration asks for a number.
            torch.set_num_threads(self.config.intra_op_threads)

    def load(self, bundle: Bundle) -> TailRunner:
        ckpt = bundle.checkpoint_path
        if ckpt is None:
            raise BundleError(
                f"{bundle.root}: the torch backend needs the bundle's torch checkpoint "
                f"({bundle.manifest.torch_checkpoint or 'torch_checkpoint is not set in the manifest'})",
                path=str(bundle.root),
            )
        from slimsplit.server.models import load_split_model

        model = load_split_model(ckpt, map_location="cpu").to(self.device).eval()
        m = bundle.manifest
        runner = TorchTailRunner(model, self.device, {spec.name: spec.width for spec in m.modes})
        self._check_shapes(bundle, runner)
        return runner

    def _check_shapes(self, bundle: Bundle, runner: TorchTailRunner) -> None:
        """Run each width once on zeros: the checkpoint must accept the manifest's feature shape."""
        m = bundle.manifest
        seen: set[int] = set()
        for spec in m.modes:
            if spec.width in seen:
                continue
            seen.add(spec.width)
            x = np.zeros((1, spec.width, m.feature.height, m.feature.width), dtype=np.float32)
            try:
                logits = runner.run(spec.name, x).logits
            except BackendError as exc:
                raise BundleError(
                    f"{bundle.checkpoint_path}: the checkpoint does not accept the manifest's features "
                    f"for mode {spec.name} (shape {list(x.shape)}): {exc}",
                    path=str(bundle.checkpoint_path),
                ) from exc
            if logits.shape != (1, len(m.classes)):
                raise BundleError(
                    f"{bundle.checkpoint_path}: mode {spec.name} gives logits of shape "
                    f"{list(logits.shape)} but the manifest lists {len(m.classes)} classes",
                    path=str(bundle.checkpoint_path),
                )

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "torch": str(self._torch.__version__),
            "device": str(self.device),
            "threads": str(self._torch.get_num_threads()),
        }
