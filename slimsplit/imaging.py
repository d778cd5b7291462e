"""How an image of any size becomes the bundle's input size: centre crop to the input's aspect ratio, then resize.

The one policy for every source (folders of images, ``.npz`` frames, cameras, video files, streams), the same as
training's (a square window of the background photo, resized with Pillow's ``BILINEAR`` filter):

1. :func:`crop_box` - the largest centred window with the input's aspect ratio: an image ``H x W`` for an input
   ``h x w`` keeps its full height and ``floor(H * w / h)`` columns when it is wider than the input
   (``W * h > H * w``), else its full width and ``floor(W * h / w)`` rows; the window starts at
   ``((H - rows) // 2, (W - columns) // 2)``.
2. :func:`resize_bilinear` - Pillow's ``Image.resize(size, BILINEAR)`` filter in numpy: a triangle filter
   widened by the shrink factor (so shrinking averages every pixel instead of aliasing), Pillow's fixed-point
   weights (22 bits), the horizontal pass first and rounded to uint8, then the vertical pass. Resizing one axis
   it equals Pillow bit for bit; resizing both, Pillow sometimes runs the vertical pass first, and the two then
   differ by at most 1 in a few pixels.

Pure numpy (each pass one exact matrix product); the weights of a size pair are cached.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images (libImaging/Resample.c)
_HALF = 1 << (_PRECISION_BITS - 1)


def crop_box(height: int, width: int, out_height: int, out_width: int) -> tuple[int, int, int, int]:
    """The centred window ``(top, left, rows, columns)`` of an ``height x width`` image with the aspect ratio of
    ``out_height x out_width`` (see the module docstring); at least one pixel each way."""
    if min(height, width, out_height, out_width) < 1:
        raise ValueError(f"sizes must be >= 1, got image {height}x{width} and input {out_height}x{out_width}")
    if width * out_height > height * out_width:  # wider than the input: keep the height
        rows, cols = height, max(1, height * out_width // out_height)
    else:
        rows, cols = max(1, width * out_height // out_width), width
    return (height - rows) // 2, (width - cols) // 2, rows, cols


def center_crop(image: Image, out_height: int, out_width: int) -> Image:
    """``image`` [H, W, C] cut to :func:`crop_box` (a view, no copy)."""
    top, left, rows, cols = crop_box(image.shape[0], image.shape[1], out_height, out_width)
    return image[top : top + rows, left : left + cols]


@functools.lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int) -> npt.NDArray[np.float64]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the bilinear filter, as a dense
    ``[out, in]`` matrix of its fixed-point weights (integers, held as float64: every product and sum of a pass
    stays below 2**53, so the matrix product is exact)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter's support is 1
    ss = 1.0 / filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int(): C's truncation, as Pillow
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ks = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * ss)) for x in range(xmax)]
        total = sum(ks)
        for x, k in enumerate(ks):
            k = k / total if total != 0.0 else k
            fixed = -0.5 + k * (1 << _PRECISION_BITS) if k < 0 else 0.5 + k * (1 << _PRECISION_BITS)
            matrix[xx, xmin + x] = math.trunc(fixed)
    matrix.setflags(write=False)
    return matrix


def _round(acc: npt.NDArray[np.float64]) -> Image:
    """Pillow's ``clip8``: ``(acc + 2**21) >> 22``, clipped to 0..255."""
    out: Image = np.clip(np.floor((acc + _HALF) / (1 << _PRECISION_BITS)), 0, 255).astype(np.uint8)
    return out


def _resample(image: Image, out_size: int, axis: int) -> Image:
    """One pass of the filter along ``axis`` (0: rows, 1: columns) of a uint8 [H, W, C] image."""
    matrix = _weights(image.shape[axis], out_size)
    pixels = image.astype(np.float64)
    h, w, c = pixels.shape
    if axis == 1:  # [H, W, C] -> [H, C, W] @ [W, out] -> [H, out, C]
        rows = np.ascontiguousarray(pixels.transpose(0, 2, 1)).reshape(h * c, w)
        return _round((rows @ matrix.T).reshape(h, c, out_size).transpose(0, 2, 1))
    return _round((matrix @ pixels.reshape(h, w * c)).reshape(out_size, w, c))


def resize_bilinear(image: Image, height: int, width: int) -> Image:
    """Resize a uint8 [H, W, C] image to ``height x width`` with the filter of Pillow's ``resize((width, height),
    BILINEAR)`` (antialiased when shrinking; see the module docstring). The same array when the size matches."""
    if height < 1 or width < 1:
        raise ValueError(f"the output size must be >= 1x1, got {height}x{width}")
    out = image
    if out.shape[1] != width:
        out = _resample(out, width, axis=1)
    if out.shape[0] != height:
        out = _resample(out, height, axis=0)
    return out


def fit_size(image: Image, height: int, width: int) -> Image:
    """The policy: :func:`center_crop` to the aspect ratio of ``height x width``, then :func:`resize_bilinear`."""
    fitted = resize_bilinear(center_crop(image, height, width), height, width)
    return np.ascontiguousarray(fitted)


__all__ = ["center_crop", "crop_box", "fit_size", "resize_bilinear"]
