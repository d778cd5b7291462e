"""Where the emulator's activation ranges come from.

``encoder``: the bundle's own encoder run (ONNX Runtime, CPU) on the shipped sample images, so the tail is
calibrated on the features it will really receive. ``synthetic``: standard-normal features (no bundle data needed;
ranges may not match real traffic — the runner reports the saturated fraction so that shows up).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle, default_samples_path
from slimsplit.errors import BackendError
from slimsplit.server.backends.fpga.config import FpgaConfig

F32 = npt.NDArray[np.float32]


def synthetic_features(shape: tuple[int, ...], count: int, seed: int = 0) -> F32:
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)


def _sample_images(path: Path, count: int, channels: int) -> npt.NDArray[np.uint8]:
    """uint8 images as NCHW (the shipped samples are NHWC; NCHW files are accepted too)."""
    if not path.is_file():
        raise BackendError(f"no sample images at {path}")
    with np.load(path) as data:
        for key in ("images", "x", "image", *data.files):
            if key in data.files:
                arr = data[key]
                if arr.dtype == np.uint8 and arr.ndim == 4:
                    arr = np.asarray(arr[:count])
                    if arr.shape[1] != channels and arr.shape[-1] == channels:
                        arr = arr.transpose(0, 3, 1, 2)
                    return np.ascontiguousarray(arr)
    raise BackendError(f"{path}: no uint8 image array (NHWC or NCHW) inside")


def encoder_features(bundle: Bundle, width: int, count: int, samples_path: Path | None = None) -> F32:
    """Run the bundle's encoder at ``width`` on up to ``count`` sample images; returns [N, width, H, W]."""
    import onnxruntime as ort

    spec = bundle.manifest
    images = _sample_images(samples_path or default_samples_path(), count, spec.input.channels)
    mean = np.asarray(spec.input.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.input.std, dtype=np.float32).reshape(1, -1, 1, 1)
    x = ((images.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle.encoder_path), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    feeds: dict[str, npt.NDArray[np.generic]] = {spec.encoder.image_input: x}
    if spec.encoder.width_input in names:
        feeds[spec.encoder.width_input] = np.asarray([width], dtype=np.int64)
    out = np.asarray(sess.run([spec.encoder.output], feeds)[0], dtype=np.float32)
    return np.ascontiguousarray(out[:, :width])


def calibration_features(bundle: Bundle, width: int, shape: tuple[int, ...], config: FpgaConfig) -> tuple[F32, str]:
    """Features to calibrate one tail with, and a label saying where they came from."""
    if config.calibration in ("auto", "encoder"):
        try:
            feats = encoder_features(bundle, width, config.calibration_samples, config.samples_path)
            if tuple(feats.shape[1:]) != tuple(shape):
                raise BackendError(f"encoder features have shape {feats.shape[1:]}, the tail expects {shape}")
            return feats, "encoder"
        except Exception as exc:
            if config.calibration == "encoder":
                raise BackendError(f"calibration from the bundle's encoder failed: {exc}") from exc
    return synthetic_features(shape, config.calibration_samples), "synthetic"
