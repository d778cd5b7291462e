"""The edge encoder runtime: O(1) mode switches, validation, and no torch on the device."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimsplit.bundle import Bundle, default_bundle_path, default_samples_path
from slimsplit.codec import decode_features
from slimsplit.edge.runtime import EncoderRuntime
from slimsplit.errors import BundleError, InvalidFrame, UnknownMode


@pytest.fixture(scope="module")
def runtime() -> EncoderRuntime:
    return EncoderRuntime(Bundle.open(default_bundle_path()))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    images: np.ndarray = np.load(default_samples_path())["images"]
    return images


def test_every_mode_encodes_its_width_and_bits(runtime: EncoderRuntime, images: np.ndarray) -> None:
    f = runtime.bundle.manifest.feature
    for mode in runtime.modes:
        runtime.set_mode(mode.name)
        frame = runtime.encode(images[0])
        decoded = decode_features(frame.payload, tables=runtime.codec_tables(mode.name))
        assert decoded.header.bits == mode.bits
        assert decoded.array.shape == (mode.width, f.height, f.width)
        assert frame.mode == mode.name
    # the narrow modes ship a learned huffman code, and the runtime uses it where it is the smallest
    runtime.set_mode("w2b2")
    coders = {
        decode_features(runtime.encode(img).payload, tables=runtime.codec_tables("w2b2")).header.coder
        for img in images[:20]
    }
    assert "huffman" in coders


def test_narrow_width_is_a_slice_of_the_widest(runtime: EncoderRuntime, images: np.ndarray) -> None:
    runtime.set_mode("w16b8")
    wide = runtime.features_batch(images[:4])
    runtime.set_mode("w4b8")
    narrow = runtime.features_batch(images[:4])
    np.testing.assert_allclose(narrow, wide[:, :4], rtol=1e-5, atol=1e-5)


def test_mode_switch_keeps_the_session(runtime: EncoderRuntime) -> None:
    session = runtime._session
    for mode in runtime.modes:
        runtime.set_mode(mode.name)
        assert runtime._session is session
        assert runtime.mode.name == mode.name


def test_unknown_mode(runtime: EncoderRuntime) -> None:
    before = runtime.mode
    with pytest.raises(UnknownMode, match="w99b1"):
        runtime.set_mode("w99b1")
    assert runtime.mode == before


@pytest.mark.parametrize(
    "bad",
    [np.zeros((32, 32, 3), np.uint8), np.zeros((64, 64, 3), np.float32), np.zeros((2, 64, 64, 4), np.uint8)],
)
def test_bad_images_are_refused(runtime: EncoderRuntime, bad: np.ndarray) -> None:
    with pytest.raises(InvalidFrame):
        runtime.encode(bad)


def test_manifest_that_disagrees_with_the_onnx_shapes(tmp_path: Path) -> None:
    dst = tmp_path / "b"
    shutil.copytree(default_bundle_path(), dst)
    raw = json.loads((dst / "manifest.json").read_text())
    raw["input"]["height"] = 32
    (dst / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="disagrees with the manifest"):
        EncoderRuntime(Bundle.open(dst))


def test_corrupt_encoder_file(tmp_path: Path) -> None:
    dst = tmp_path / "b"
    shutil.copytree(default_bundle_path(), dst)
    (dst / "encoder.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="cannot load encoder"):
        EncoderRuntime(Bundle.open(dst))


def test_edge_runtime_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import slimsplit.edge.runtime, slimsplit.codec, slimsplit.bundle\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'onnx', 'PIL', 'skimage'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
