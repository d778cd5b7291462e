"""The edge's encoder runtime: the bundle's width-switchable ONNX encoder in one ONNX Runtime session.

``set_mode`` is O(1): it swaps two small numpy scalars (the width fed to the graph and the codec's bit depth).
No session is created, no file is read and no weights are allocated on a mode switch; every mode runs through
the same session. Needs numpy and onnxruntime only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from slimsplit.bundle import Bundle, ModeSpec
from slimsplit.bundle.codec_tables import load_codec_tables
from slimsplit.codec import HuffmanTables, encode_features
from slimsplit.codec.planes import encode_planes
from slimsplit.errors import BundleError, InvalidFrame


@dataclass(frozen=True)
class EncoderConfig:
    """ONNX Runtime settings for the encoder (a Raspberry Pi 4 has 4 cores; 0 = let ORT decide)."""

    intra_op_threads: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    graph_optimization: str = "all"  # "basic" | "extended" | "all" | "disabled"


@dataclass(frozen=True)
class EncodedFrame:
    """One frame ready for the wire."""

    payload: bytes  # codec header + payload
    mode: str
    encoder_ms: float  # preprocessing + ONNX Runtime
    codec_ms: float  # quantization + packing + entropy coding


_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class EncoderRuntime:
    """Runs head + slimmable bottleneck encoder for the current mode and encodes the features: as one frame of the
    feature codec, or with ``planes`` as the mode's bit planes (``slimsplit.codec.planes`` units laid end to end,
    most significant first, for :class:`~slimsplit.edge.plane_transport.PlaneTransport`)."""

    def __init__(self, bundle: Bundle, config: EncoderConfig | None = None, *, planes: bool = False) -> None:
        self.bundle = bundle
        self.planes = planes
        self.config = config or EncoderConfig()
        m = bundle.manifest
        self._spec = m.encoder
        self._input = m.input
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.config.intra_op_threads
        so.inter_op_num_threads = 1
        try:
            so.graph_optimization_level = _OPT_LEVELS[self.config.graph_optimization]
        except KeyError:
            raise BundleError(f"unknown graph_optimization {self.config.graph_optimization!r}") from None
        try:
            self._session = ort.InferenceSession(str(bundle.encoder_path), so, providers=list(self.config.providers))
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            raise BundleError(
                f"cannot load encoder {bundle.encoder_path}: {exc}", path=str(bundle.encoder_path)
            ) from exc
        self._check_graph()
        self._mean = np.asarray(self._input.mean, np.float32).reshape(1, -1, 1, 1)
        self._inv_std = (1.0 / np.asarray(self._input.std, np.float32)).reshape(1, -1, 1, 1)
        self._modes = {mode.name: mode for mode in m.modes}
        self._tables = load_codec_tables(bundle)  # the codec's learned huffman code per mode (may be empty)
        self._width_feeds = {mode.name: np.array([mode.width], np.int64) for mode in m.modes}
        widest = max(m.modes, key=lambda s: (s.width, s.bits))
        self._mode = widest
        self._width_feed = self._width_feeds[widest.name]
        self._outputs = [self._spec.output]

    def _check_graph(self) -> None:
        ins = {i.name: i for i in self._session.get_inputs()}
        outs = {o.name: o for o in self._session.get_outputs()}
        path = self.bundle.encoder_path
        for name in (self._spec.image_input, self._spec.width_input):
            if name not in ins:
                raise BundleError(f"{path}: the encoder has no input {name!r} (inputs: {sorted(ins)})")
        if self._spec.output not in outs:
            raise BundleError(f"{path}: the encoder has no output {self._spec.output!r} (outputs: {sorted(outs)})")
        shape = ins[self._spec.image_input].shape
        expected = list(self._input.shape)
        if len(shape) != 4 or [d for d in shape[1:]] != expected:
            raise BundleError(f"{path}: encoder input shape {shape} disagrees with the manifest's input {expected}")
        oshape = outs[self._spec.output].shape
        f = self.bundle.manifest.feature
        if len(oshape) != 4 or list(oshape[2:]) != [f.height, f.width]:
            raise BundleError(
                f"{path}: encoder output shape {oshape} disagrees with the manifest's feature "
                f"[*, {f.height}, {f.width}]"
            )

    # -- modes -------------------------------------------------------------------------------------------
    @property
    def mode(self) -> ModeSpec:
        return self._mode

    @property
    def modes(self) -> tuple[ModeSpec, ...]:
        return self.bundle.manifest.modes

    def codec_tables(self, mode: str) -> HuffmanTables | None:
        """The codec's learned huffman tables of ``mode`` (``None`` when the bundle ships none)."""
        return self._tables.get(mode)

    def set_mode(self, name: str) -> None:
        """Switch the operating mode: O(1), two dictionary lookups."""
        mode = self._modes.get(name)
        if mode is None:
            self.bundle.manifest.mode(name)  # raises UnknownMode with the list of known modes
            return
        self._mode = mode
        self._width_feed = self._width_feeds[name]

    # -- inference ---------------------------------------------------------------------------------------
    def preprocess(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """uint8 RGB [N,H,W,3] (or one [H,W,3]) -> normalized float32 [N,3,H,W]."""
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        c, h, w = self._input.shape
        if arr.ndim != 4 or arr.shape[1:] != (h, w, c):
            raise InvalidFrame(f"expected images of shape [N,{h},{w},{c}] (uint8 RGB), got {list(arr.shape)}")
        if arr.dtype != np.uint8:
            raise InvalidFrame(f"expected uint8 images, got {arr.dtype}")
        x = arr.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1.0 / 255.0)
        return np.ascontiguousarray((x - self._mean) * self._inv_std, dtype=np.float32)

    def features_batch(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Encoder output for the current mode: float32 [N, width, H', W']."""
        x = self.preprocess(images)
        out = self._session.run(self._outputs, {self._spec.image_input: x, self._spec.width_input: self._width_feed})
        return np.asarray(out[0], dtype=np.float32)

    def features(self, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Encoder output of one image for the current mode: float32 [width, H', W']."""
        out: npt.NDArray[np.float32] = self.features_batch(image)[0]
        return out

    def encode(self, image: npt.NDArray[np.uint8]) -> EncodedFrame:
        """One image -> wire payload for the current mode, with the time spent in each step."""
        mode = self._mode
        t0 = time.perf_counter()
        feats = self.features(image)
        t1 = time.perf_counter()
        if self.planes:
            payload = b"".join(encode_planes(feats, mode.bits))
        else:
            payload = encode_features(feats, mode.bits, tables=self._tables.get(mode.name))
        t2 = time.perf_counter()
        return EncodedFrame(payload=payload, mode=mode.name, encoder_ms=(t1 - t0) * 1e3, codec_ms=(t2 - t1) * 1e3)
