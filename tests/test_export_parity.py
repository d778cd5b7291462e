"""ONNX Runtime and torch agree per mode on the shipped bundle.

Tolerances: encoder features |ort - torch| <= 5e-4 + 1e-5 * |torch| (float32 rounding in a different summation
order, on features of magnitude up to a few hundred: the largest difference seen is 1.7e-4); tail logits on identical
inputs |ort - torch| <= 1e-3 + 1e-5 * |torch|; and top-1 through the full
quantized path (each side's own features through the real codec) identical on >= 99.5% of images.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from slimsplit.bundle import Bundle, default_bundle_path, default_samples_path
from slimsplit.bundle.codec_tables import load_codec_tables
from slimsplit.codec import HuffmanTables, decode_features, encode_features
from slimsplit.server.export import preprocess
from slimsplit.server.models import load_split_model
from slimsplit.server.training.data import FASHION_MNIST_DIR

FEATURE_ATOL = 5e-4
LOGIT_ATOL = 1e-3
RTOL = 1e-5


def _check_parity(images: np.ndarray) -> None:
    bundle = Bundle.open(default_bundle_path())
    m = bundle.manifest
    assert bundle.checkpoint_path is not None
    model = load_split_model(bundle.checkpoint_path)
    enc = ort.InferenceSession(str(bundle.encoder_path), providers=["CPUExecutionProvider"])
    x = preprocess(images, m.input)
    tables = load_codec_tables(bundle)
    with torch.no_grad():
        t_full = model.encode(torch.from_numpy(x)).numpy()
    o_full = enc.run(None, {"image": x, "width": np.array([m.feature.max_channels], np.int64)})[0]
    np.testing.assert_allclose(o_full, t_full, atol=FEATURE_ATOL, rtol=RTOL)
    for mode in m.modes:
        tail = ort.InferenceSession(str(bundle.tail_path(mode)), providers=["CPUExecutionProvider"])

        mode_tables = tables.get(mode.name)  # the bundle's learned huffman code for this mode, if it ships one

        def through_codec(
            f: np.ndarray, bits: int = mode.bits, w: int = mode.width, t: HuffmanTables | None = mode_tables
        ) -> np.ndarray:
            return np.stack([decode_features(encode_features(fi[:w], bits, tables=t), tables=t).array for fi in f])

        z_ort, z_torch = through_codec(o_full), through_codec(t_full)
        ort_logits = tail.run(None, {"features": z_ort})[0]
        with torch.no_grad():
            torch_logits = model.tail_forward(torch.from_numpy(z_torch), mode.width).numpy()
            same_input = model.tail_forward(torch.from_numpy(z_ort), mode.width).numpy()
        np.testing.assert_allclose(ort_logits, same_input, atol=LOGIT_ATOL, rtol=RTOL, err_msg=mode.name)
        agree = float((ort_logits.argmax(1) == torch_logits.argmax(1)).mean())
        assert agree >= 0.995, f"{mode.name}: top-1 agrees on {agree:.4f} of images"


def test_parity_on_the_shipped_sample() -> None:
    _check_parity(np.load(default_samples_path())["images"])


@pytest.mark.dataset
@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist",
)
def test_parity_on_1000_test_images() -> None:
    from slimsplit.server.training.data import fashion_test_set

    _check_parity(fashion_test_set(limit=1000).images)
