"""Training data, the training recipe on a few batches, export, and clear errors for bad data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slimsplit.bundle import Bundle, default_samples_path
from slimsplit.bundle.codec_tables import load_codec_tables
from slimsplit.errors import DatasetError
from slimsplit.server.training import cli
from slimsplit.server.training.data import (
    FASHION_MNIST_DIR,
    TEST_BACKGROUNDS,
    TRAIN_BACKGROUNDS,
    load_fashion_mnist,
    load_image_folder,
    load_image_folder_splits,
    read_idx,
    render_fashion,
)

HAVE_FASHION = (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist",
)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_idx_round_trip(tmp_path: Path) -> None:
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    _write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), arr)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not gzip at all", "corrupt data file"),
        (gzip.compress(b"\x00\x00\x0d\x03" + b"\x00" * 12), "bad magic"),
        (gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 100) + b"\x01" * 10), "header says"),
        (gzip.compress(b"\x00\x00"), "only 2 bytes"),
    ],
)
def test_corrupt_idx_files_are_clear_errors(tmp_path: Path, payload: bytes, message: str) -> None:
    (tmp_path / "bad.gz").write_bytes(payload)
    with pytest.raises(DatasetError, match=message):
        read_idx(tmp_path / "bad.gz")


def test_missing_data_set_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


def test_rendering_is_deterministic_and_rgb() -> None:
    items = np.zeros((4, 28, 28), np.uint8)
    items[:, 8:20, 8:20] = 255
    bgs = [np.full((100, 120, 3), 30, np.uint8), np.full((90, 90), 200, np.uint8)]
    a = render_fashion(items, bgs, seed=3)
    b = render_fashion(items, bgs, seed=3)
    c = render_fashion(items, bgs, seed=4)
    assert a.shape == (4, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(TRAIN_BACKGROUNDS).isdisjoint(TEST_BACKGROUNDS)


@needs_fashion
@pytest.mark.dataset
def test_fashion_mnist_loads() -> None:
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert set(np.unique(labels)) == set(range(10))


def _image_folder(root: Path, per_class: int = 12) -> Path:
    s = np.load(default_samples_path())
    classes = [str(c) for c in s["classes"]]
    for c in range(3):
        d = root / classes[c].replace("/", "-")
        d.mkdir(parents=True)
        for i, img in enumerate(s["images"][s["labels"] == c][:per_class]):
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def test_image_folder_loading_and_errors(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "data")
    data = load_image_folder(root)
    assert len(data) == 36 and data.images.shape[1:] == (64, 64, 3) and len(data.classes) == 3
    train, test = load_image_folder_splits(root)
    assert len(train) + len(test) == 36 and len(test) >= 1
    (root / data.classes[0] / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        load_image_folder(root)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_image_folder(empty)
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "missing")


def test_train_cli_on_an_image_folder_writes_a_valid_bundle(tmp_path: Path) -> None:
    """The whole recipe (teacher, student, recalibration, export, measurement) on a few batches."""
    root = _image_folder(tmp_path / "data")
    rc = cli.main(
        [
            "--data",
            str(root),
            "--out",
            str(tmp_path / "run"),
            "--teacher-epochs",
            "1",
            "--student-epochs",
            "1",
            "--batch-size",
            "16",
            "--no-progress",
            "--widths",
            "2,4",
            "--bits",
            "2,8",
            "--name",
            "tiny",
        ]
    )
    assert rc == 0
    bundle = Bundle.open(tmp_path / "run" / "bundle")
    m = bundle.manifest
    assert m.name == "tiny" and [x.name for x in m.modes] == ["w2b2", "w2b8", "w4b2", "w4b8"]
    assert m.baseline_model is not None and all(x.accuracy is not None for x in m.modes)
    assert m.codec_tables == "codec_tables.npz"  # the codec's huffman tables, fitted on the training images
    assert set(load_codec_tables(bundle)) <= {x.name for x in m.modes}  # the modes where a learned code pays
    # resuming a finished run trains nothing again and reproduces the same weights
    first = (tmp_path / "run" / "bundle" / "tails" / "w4.onnx").read_bytes()
    assert (
        cli.main(
            [
                "--data",
                str(root),
                "--out",
                str(tmp_path / "run"),
                "--teacher-epochs",
                "1",
                "--student-epochs",
                "1",
                "--batch-size",
                "16",
                "--no-progress",
                "--widths",
                "2,4",
                "--bits",
                "2,8",
                "--name",
                "tiny",
            ]
        )
        == 0
    )
    assert (tmp_path / "run" / "bundle" / "tails" / "w4.onnx").read_bytes() == first


def test_train_cli_reports_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err


def test_train_cli_rejects_bad_flags() -> None:
    with pytest.raises(SystemExit, match="--bits"):
        cli.main(["--bits", "1,two"])
