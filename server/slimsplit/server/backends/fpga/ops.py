"""Numpy kernels shared by the float reference and the fixed-point emulator.

The linear kernels (convolution, transposed convolution, matrix products, window sums) run in float64. For the
fixed-point emulator the operands are integers, and float64 arithmetic on integers is exact as long as every partial
sum stays below 2**53 in magnitude; with int16 x int16 products (< 2**30) that holds for reductions shorter than
2**23 terms, which :func:`check_exact_reduction` enforces at compile time. So the emulator gets BLAS speed with
bit-exact integer results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from slimsplit.errors import BackendError

F64 = npt.NDArray[np.float64]
MAX_EXACT_REDUCTION = 1 << 22


def check_exact_reduction(length: int, where: str) -> None:
    if length >= MAX_EXACT_REDUCTION:
        raise BackendError(
            f"{where}: reduction of {length} terms could exceed the exact float64 range of the emulator "
            f"(limit {MAX_EXACT_REDUCTION})"
        )


def pad_nchw(x: F64, pads: Sequence[int], value: float = 0.0) -> F64:
    """``pads`` = (top, left, bottom, right) as in ONNX (begin..., end...) for the two spatial axes."""
    top, left, bottom, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="constant", constant_values=value)


def windows(
    x: F64, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int] = (1, 1)
) -> npt.NDArray[np.float64]:
    """Sliding windows of an (already padded) NCHW tensor: [N, C, Ho, Wo, kh, kw] (a view, no copy)."""
    kh, kw = kernel
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    view = sliding_window_view(x, (eh, ew), axis=(2, 3))
    return view[:, :, :: stride[0], :: stride[1], :: dilation[0], :: dilation[1]]


def conv2d(
    x: F64,
    w: F64,
    stride: Sequence[int],
    pads: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> F64:
    """NCHW convolution with ONNX semantics; ``w`` is [Cout, Cin/groups, kh, kw] (im2col + matrix product)."""
    n, c, _, _ = x.shape
    cout, cg, kh, kw = w.shape
    if c != cg * groups or cout % groups:
        raise BackendError(f"conv: {c} input channels do not match weights {w.shape} with groups={groups}")
    win = windows(pad_nchw(x, pads), (kh, kw), stride, dilation)  # N C Ho Wo kh kw
    ho, wo = win.shape[2], win.shape[3]
    if cg == 1 and groups == c:  # depthwise (with a channel multiplier): one multiply-add per tap
        mult = cout // c
        acc = np.zeros((n, c, mult, ho, wo), dtype=np.float64)
        wr = w.reshape(c, mult, kh, kw)
        for i in range(kh):
            for j in range(kw):
                acc += win[:, :, np.newaxis, :, :, i, j] * wr[np.newaxis, :, :, i, j, np.newaxis, np.newaxis]
        return acc.reshape(n, cout, ho, wo)
    og = cout // groups
    outs = []
    for g in range(groups):
        cols = win[:, g * cg : (g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
        outs.append(cols @ w[g * og : (g + 1) * og].reshape(og, cg * kh * kw).T)
    out = np.concatenate(outs, axis=1).reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, dtype=np.float64)


def conv_transpose2d(
    x: F64,
    w: F64,
    stride: Sequence[int],
    pads: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    output_padding: Sequence[int],
) -> F64:
    """NCHW transposed convolution with ONNX semantics; ``w`` is [Cin, Cout/groups, kh, kw]."""
    n, c, h, wd = x.shape
    cin, og, kh, kw = w.shape
    if c != cin or cin % groups:
        raise BackendError(f"conv_transpose: {c} input channels do not match weights {w.shape}")
    sh, sw = stride
    dh, dw = dilation
    full_h = (h - 1) * sh + dh * (kh - 1) + 1 + output_padding[0]
    full_w = (wd - 1) * sw + dw * (kw - 1) + 1 + output_padding[1]
    cg = cin // groups
    out = np.zeros((n, groups * og, full_h, full_w), dtype=np.float64)
    rows = x.transpose(0, 2, 3, 1).reshape(n * h * wd, cin)
    for g in range(groups):
        # every input pixel times every tap at once: [n, h, w, og, kh, kw]
        taps = (rows[:, g * cg : (g + 1) * cg] @ w[g * cg : (g + 1) * cg].reshape(cg, og * kh * kw)).reshape(
            n, h, wd, og, kh, kw
        )
        taps = taps.transpose(0, 3, 4, 5, 1, 2)  # n og kh kw h w
        for i in range(kh):
            for j in range(kw):
                out[
                    :,
                    g * og : (g + 1) * og,
                    i * dh : i * dh + (h - 1) * sh + 1 : sh,
                    j * dw : j * dw + (wd - 1) * sw + 1 : sw,
                ] += taps[:, :, i, j]
    top, left, bottom, right = pads
    return np.ascontiguousarray(out[:, :, top : full_h - bottom, left : full_w - right])


def pool_pads(
    size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pads: Sequence[int], ceil_mode: bool
) -> tuple[int, int, int, int]:
    """Pads with the extra bottom/right padding that ``ceil_mode`` needs (those cells are never counted)."""
    top, left, bottom, right = pads
    extra = []
    for dim, k, s, p0, p1 in zip(size, kernel, stride, (top, left), (bottom, right), strict=True):
        span = dim + p0 + p1 - k
        out = (math.ceil(span / s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= dim + p0:  # last window must start inside the input or left pad
            out -= 1
        extra.append(max(0, (out - 1) * s + k - (dim + p0 + p1)))
    return top, left, bottom + extra[0], right + extra[1]


def avgpool_counts(
    size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pads: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
) -> F64:
    """Number of cells each average-pool window divides by: [Ho, Wo]."""
    full = pool_pads(size, kernel, stride, pads, ceil_mode)
    ones = np.ones((1, 1, size[0], size[1]), dtype=np.float64)
    if count_include_pad:  # explicit pads count, the ceil_mode extension does not
        ones = pad_nchw(ones, pads, 1.0)
        extra = (0, 0, full[2] - pads[2], full[3] - pads[3])
        ones = pad_nchw(ones, extra, 0.0)
    else:
        ones = pad_nchw(ones, full, 0.0)
    return np.asarray(windows(ones, kernel, stride).sum(axis=(-1, -2))[0, 0], dtype=np.float64)


def nearest_indices(
    in_size: int, out_size: int, scale: float, coordinate_mode: str, nearest_mode: str
) -> npt.NDArray[np.int64]:
    """Source index of every output position of an ONNX ``Resize(mode="nearest")`` along one axis."""
    x = np.arange(out_size, dtype=np.float64)
    if coordinate_mode == "half_pixel":
        orig = (x + 0.5) / scale - 0.5
    elif coordinate_mode == "pytorch_half_pixel":
        orig = (x + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(x)
    elif coordinate_mode == "align_corners":
        orig = x * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(x)
    elif coordinate_mode == "asymmetric":
        orig = x / scale
    elif coordinate_mode == "tf_half_pixel_for_nn":
        orig = (x + 0.5) / scale
    else:
        raise BackendError(f"Resize: unsupported coordinate_transformation_mode {coordinate_mode!r}")
    if nearest_mode == "round_prefer_floor":
        idx = np.where(orig - np.floor(orig) == 0.5, np.floor(orig), np.round(orig))
    elif nearest_mode == "round_prefer_ceil":
        idx = np.where(orig - np.floor(orig) == 0.5, np.ceil(orig), np.round(orig))
    elif nearest_mode == "floor":
        idx = np.floor(orig)
    elif nearest_mode == "ceil":
        idx = np.ceil(orig)
    else:
        raise BackendError(f"Resize: unsupported nearest_mode {nearest_mode!r}")
    return np.clip(idx, 0, in_size - 1).astype(np.int64)


def matmul(a: F64, b: F64) -> F64:
    return np.asarray(np.matmul(a, b), dtype=np.float64)
