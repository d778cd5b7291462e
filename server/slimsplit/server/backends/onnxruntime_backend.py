"""ONNX Runtime tails: one session per tail file, shared by every mode of the same width.

Providers: the CUDA execution provider when the config asks for it (``device = "cuda"``, or ``"auto"`` and
CUDA is available), else CPU. At load, each tail's input/output shapes are checked against the manifest so a
bundle that disagrees with its ONNX files fails at start-up with a :class:`~slimsplit.errors.BundleError`
naming the file, not on the first frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle
from slimsplit.errors import BackendError, BundleError, UnknownMode
from slimsplit.server.backends.base import Backend, TailOutput, TailRunner
from slimsplit.server.config import BackendConfig

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency of the server extra
        raise BackendError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime") from exc
    return onnxruntime


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Execution providers for ``device`` (auto/cpu/cuda) given what this onnxruntime build offers."""
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise BackendError(
                f"device 'cuda' was requested but this onnxruntime has no {CUDA} (available: "
                f"{', '.join(available)}); install onnxruntime-gpu or use device 'cpu'/'auto'"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


@dataclass(frozen=True)
class _Tail:
    session: Any
    input_name: str
    output_name: str
    fixed_batch: int | None  # the model's batch dimension when it is a fixed number, else None (dynamic)


class OnnxTailRunner(TailRunner):
    """Runs ``session.run`` for the mode's width; ONNX Runtime sessions are safe to call from several
    threads."""

    def __init__(self, mode_tails: dict[str, _Tail], *, cpu_only: bool = False) -> None:
        self._mode_tail = dict(mode_tails)  # modes of the same width share one _Tail (one session)
        self._closed = False
        self.inline_safe = cpu_only  # a GPU session may wait on the device: keep it off the event loop

    def run(self, mode: str, features: npt.NDArray[np.float32]) -> TailOutput:
        if self._closed:
            raise BackendError("the onnxruntime runner is closed")
        tail = self._mode_tail.get(mode)
        if tail is None:
            raise UnknownMode(f"mode {mode!r} is not loaded on this runner", mode=mode)
        x = np.ascontiguousarray(features, dtype=np.float32)
        try:
            if tail.fixed_batch is None or tail.fixed_batch == x.shape[0]:
                (logits,) = tail.session.run([tail.output_name], {tail.input_name: x})
            else:  # a model exported with a fixed batch of 1: run the frames one by one
                parts = [
                    tail.session.run([tail.output_name], {tail.input_name: x[i : i + 1]})[0] for i in range(len(x))
                ]
                logits = np.concatenate(parts, axis=0)
        except Exception as exc:
            raise BackendError(f"onnxruntime failed on mode {mode!r}: {exc}", mode=mode) from exc
        return TailOutput(logits=np.asarray(logits, dtype=np.float32))

    def close(self) -> None:
        self._closed = True
        self._mode_tail.clear()


def _dim_ok(actual: Any, expected: int) -> bool:
    """A model dimension matches when it is the expected number or symbolic/unknown (dynamic)."""
    return not isinstance(actual, int) or actual == expected


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()
        ort = _ort()
        self._ort = ort
        self.providers = choose_providers(self.config.device, list(ort.get_available_providers()))

    def _session(self, path: Path) -> Any:
        ort = self._ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.config.intra_op_threads
        opts.inter_op_num_threads = self.config.inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        except Exception as exc:
            raise BundleError(f"{path}: onnxruntime cannot load this tail: {exc}", path=str(path)) from exc

    def _check(self, path: Path, session: Any, width: int, bundle: Bundle) -> _Tail:
        m = bundle.manifest
        inputs = session.get_inputs()
        outputs = session.get_outputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise BundleError(
                f"{path}: a tail must have exactly one input (features), this one has: {names}",
                path=str(path),
            )
        if not outputs:
            raise BundleError(f"{path}: the tail has no output", path=str(path))
        inp, out = inputs[0], outputs[0]
        expected = (width, m.feature.height, m.feature.width)
        shape = list(inp.shape)
        if inp.type != "tensor(float)":
            raise BundleError(f"{path}: input {inp.name!r} must be float32, it is {inp.type}", path=str(path))
        if len(shape) != 4 or not all(_dim_ok(a, e) for a, e in zip(shape[1:], expected, strict=True)):
            raise BundleError(
                f"{path}: input {inp.name!r} has shape {shape} but the manifest's width-{width} modes send "
                f"[N, {expected[0]}, {expected[1]}, {expected[2]}]",
                path=str(path),
            )
        oshape = list(out.shape)
        if len(oshape) != 2 or not _dim_ok(oshape[1], len(m.classes)):
            raise BundleError(
                f"{path}: output {out.name!r} has shape {oshape} but the manifest lists "
                f"{len(m.classes)} classes (expected [N, {len(m.classes)}])",
                path=str(path),
            )
        fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        return _Tail(session=session, input_name=inp.name, output_name=out.name, fixed_batch=fixed)

    def load(self, bundle: Bundle) -> TailRunner:
        widths: dict[str, int] = {}
        for spec in bundle.manifest.modes:
            prev = widths.setdefault(spec.tail, spec.width)
            if prev != spec.width:
                raise BundleError(
                    f"{bundle.root}: tail file {spec.tail} is used by modes of widths {prev} and "
                    f"{spec.width}; a tail serves exactly one width",
                    path=str(bundle.root),
                )
        tails = {}
        for tail_file, width in widths.items():
            path = bundle.path(tail_file)
            tails[tail_file] = self._check(path, self._session(path), width, bundle)
        cpu_only = self.providers == ["CPUExecutionProvider"]
        return OnnxTailRunner({spec.name: tails[spec.tail] for spec in bundle.manifest.modes}, cpu_only=cpu_only)

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "onnxruntime": str(self._ort.__version__),
            "providers": ",".join(self.providers),
            "intra_op_threads": str(self.config.intra_op_threads),
        }
