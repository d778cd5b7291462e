"""Training data: Fashion-MNIST rendered as 64x64 RGB scenes, or any ImageFolder-layout directory.

Rendering (``render_fashion``), exactly:

1. Background: one of scikit-image's bundled photos. Train images use ``TRAIN_BACKGROUNDS``, test images the
   disjoint ``TEST_BACKGROUNDS``, so test scenes never reuse a training photo. Grayscale photos are tinted with
   a random RGB gain in [0.6, 1.0]. A random square crop with side in [64, min(H, W)] is resized to 64x64
   (bilinear) and flipped horizontally with probability 1/2.
2. Garment: the 28x28 Fashion-MNIST image is resized (bilinear) to a random side in [36, 60] px. Its intensity
   ``a = pixel / 255`` is the alpha mask; the garment colour is ``rgb * (0.35 + 0.65 * a)`` for a random colour
   ``rgb`` in [40, 255]^3, so the garment's texture survives.
3. Composite at a random position fully inside the frame: ``out = a * garment + (1 - a) * background``, uint8.

Every random draw comes from ``numpy.random.default_rng(seed)``, so a (split, seed) pair always renders the same
images. The training split is rendered once (``TRAIN_SEED``); training adds random horizontal flips and
random 4-pixel shifts as augmentation.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from slimsplit.errors import DatasetError
from slimsplit.imaging import fit_size

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
TRAIN_BACKGROUNDS = (
    "astronaut",
    "brick",
    "camera",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)
TEST_BACKGROUNDS = ("cat", "chelsea", "clock", "gravel", "page", "text")
IMAGE_SIZE = 64
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass(frozen=True)
class ImageSet:
    """uint8 images [N, H, W, 3] (RGB) with int64 labels [N] and class names."""

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int) -> ImageSet:
        return ImageSet(self.images[:n], self.labels[:n], self.classes)


# ---------------------------------------------------------------------------------------------- IDX reading


def read_idx(path: Path) -> npt.NDArray[np.uint8]:
    """Read a gzipped IDX file (uint8 data) with full header validation."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"missing data file {path}", path=str(path)) from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"corrupt data file {path}: {exc}", path=str(path)) from exc
    if len(raw) < 4:
        raise DatasetError(f"corrupt IDX file {path}: only {len(raw)} bytes", path=str(path))
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DatasetError(f"corrupt IDX file {path}: bad magic (dtype {dtype_code:#x}, ndim {ndim})", path=str(path))
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"corrupt IDX file {path}: truncated header", path=str(path))
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise DatasetError(
            f"corrupt IDX file {path}: header says {dims} = {expected} bytes, file holds {len(body)}",
            path=str(path),
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def load_fashion_mnist(
    split: str, root: Path = FASHION_MNIST_DIR
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The raw 28x28 grayscale Fashion-MNIST images and labels of ``split`` ('train' or 'test')."""
    if split not in _IDX_FILES:
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'")
    img_name, lbl_name = _IDX_FILES[split]
    if not (root / img_name).is_file() or not (root / lbl_name).is_file():
        raise DatasetError(
            f"Fashion-MNIST not found in {root} (expected {img_name} and {lbl_name}). Install it with "
            f"`apt-get install {FASHION_MNIST_PACKAGE}` (Debian package {FASHION_MNIST_PACKAGE}) or pass --data-dir.",
            path=str(root),
        )
    images = read_idx(root / img_name)
    labels = read_idx(root / lbl_name)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, labels {labels.shape}"
        )
    if labels.max(initial=0) >= len(FASHION_CLASSES):
        raise DatasetError(f"Fashion-MNIST {split} labels out of range in {root}")
    return images, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------- rendering


def _resize(img: npt.NDArray[np.uint8], size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))


def load_backgrounds(names: Sequence[str]) -> list[npt.NDArray[np.uint8]]:
    """scikit-image's bundled photos as uint8 arrays (grayscale ones stay 2-D and are tinted at render time)."""
    import skimage.data

    out = []
    for n in names:
        img = np.asarray(getattr(skimage.data, n)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        out.append(img.astype(np.uint8))
    return out


def render_fashion(
    items: npt.NDArray[np.uint8],
    backgrounds: Sequence[npt.NDArray[np.uint8]],
    seed: int,
    size: int = IMAGE_SIZE,
) -> npt.NDArray[np.uint8]:
    """Composite 28x28 garments onto natural backgrounds; see the module docstring for the exact recipe."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        bg_src = backgrounds[int(rng.integers(len(backgrounds)))]
        h, w = bg_src.shape[:2]
        side = int(rng.integers(size, min(h, w) + 1))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = bg_src[y0 : y0 + side, x0 : x0 + side]
        bg = _resize(np.ascontiguousarray(crop), (size, size)).astype(np.float32)
        if bg.ndim == 2:
            bg = bg[..., None] * rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        if rng.random() < 0.5:
            bg = bg[:, ::-1]
        g = int(rng.integers(36, 61))
        alpha = _resize(item, (g, g)).astype(np.float32)[..., None] / 255.0
        color = rng.uniform(40, 255, size=3).astype(np.float32)
        garment = color * (0.35 + 0.65 * alpha)
        gy, gx = int(rng.integers(0, size - g + 1)), int(rng.integers(0, size - g + 1))
        region = bg[gy : gy + g, gx : gx + g]
        bg[gy : gy + g, gx : gx + g] = alpha * garment + (1.0 - alpha) * region
        out[i] = np.clip(bg + 0.5, 0, 255).astype(np.uint8)
    return out


@dataclass(frozen=True)
class RenderedFashion:
    """Fashion-MNIST rendered on demand: raw items are loaded once; ``render(seed)`` makes one variant."""

    items: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    backgrounds: tuple[npt.NDArray[np.uint8], ...]

    @classmethod
    def load(cls, split: str, root: Path = FASHION_MNIST_DIR) -> RenderedFashion:
        items, labels = load_fashion_mnist(split, root)
        names = TRAIN_BACKGROUNDS if split == "train" else TEST_BACKGROUNDS
        return cls(items, labels, tuple(load_backgrounds(names)))

    def render(self, seed: int, limit: int | None = None) -> ImageSet:
        n = len(self.labels) if limit is None else min(limit, len(self.labels))
        return ImageSet(render_fashion(self.items[:n], self.backgrounds, seed), self.labels[:n], FASHION_CLASSES)


TRAIN_SEED = 1
TEST_SEED = 20231  # the fixed rendering of the test split (manifest accuracies, benchmarks, shipped samples)


def fashion_test_set(root: Path = FASHION_MNIST_DIR, limit: int | None = None) -> ImageSet:
    return RenderedFashion.load("test", root).render(TEST_SEED, limit)


# ---------------------------------------------------------------------------------------------- ImageFolder


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_image_folder(root: Path, size: int = IMAGE_SIZE, classes: Sequence[str] | None = None) -> ImageSet:
    """Read ``root/<class_name>/*.png|jpg`` into RGB uint8 images fitted to ``size``x``size`` the way the edge fits
    every frame (:func:`slimsplit.imaging.fit_size`: centre crop to the aspect ratio, then resize)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist", path=str(root))
    dirs = _class_dirs(root)
    if classes is None:
        classes = [d.name for d in dirs]
    if len(classes) < 2:
        raise DatasetError(f"image folder {root} needs at least two class subfolders, found {len(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    images: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    for d in dirs:
        if d.name not in index:
            raise DatasetError(f"{d}: class {d.name!r} is not among the training classes {list(classes)}")
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        for f in files:
            try:
                with Image.open(f) as im:
                    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
                images.append(fit_size(rgb, size, size))  # the edge's policy: centre crop, then resize
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise DatasetError(f"corrupt or unreadable image {f}: {exc}", path=str(f)) from exc
            labels.append(index[d.name])
    if not images:
        raise DatasetError(f"image folder {root} holds no images (*.png, *.jpg) in its class subfolders")
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), tuple(classes))


def load_image_folder_splits(root: Path, size: int = IMAGE_SIZE, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """``root/train`` + ``root/test`` (or ``root/val``) when present, else a deterministic 90/10 split."""
    root = Path(root)
    train_dir = root / "train"
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if train_dir.is_dir() and test_dir is not None:
        train = load_image_folder(train_dir, size)
        return train, load_image_folder(test_dir, size, train.classes)
    full = load_image_folder(root, size)
    order = np.random.default_rng(seed).permutation(len(full))
    n_test = max(1, len(full) // 10)
    te, tr = order[:n_test], order[n_test:]
    return (
        ImageSet(full.images[tr], full.labels[tr], full.classes),
        ImageSet(full.images[te], full.labels[te], full.classes),
    )
