"""InTAR's published multi-task benchmark kernels as task graphs (int16 activations and weights).

Sizes follow the InTAR paper (He et al., FCCM 2025, Table III) and its repository (``benchmark/``):

* CNN-4L: 224x224x1 input, 3x3 kernels: conv1 -> ReLU -> upsample to 448^2 -> conv2 -> ReLU -> upsample to 896^2
  -> conv3 -> max-pool -> ReLU (448^2) -> conv4;
* MLP: 256 -> 1024 -> 2048 -> 256, one input vector per run;
* VAE: 28x28 input with 2 channels; encoder 8x8 then 4x4 valid convolutions (28 -> 21 -> 18, latent 18x18 = 324
  per channel), reparameterisation (exp), decoder transposed convolutions 8x8 then 4x4 (18 -> 25 -> 28), sigmoid;
* self-attention: sequence 256, D = D_head = 1024: Q, K, V projections, Q K^T, softmax, A V;
* gating network: batch 32, 4096 -> 11008: up and gate projections, SiLU, product, down projection.

``PUBLISHED`` holds the on-board figures of the InTAR repository's ``benchmark/README.md`` (Alveo U280): cycle counts,
latencies in ms and DSP counts of the InTAR, dataflow and sequential builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slimsplit.server.backends.fpga.tasks import DType, GraphBuilder, TaskGraph


def cnn_4l(dtype: DType = DType.INT16) -> TaskGraph:
    b = GraphBuilder("cnn-4L", dtype)
    x = b.input("image", (1, 1, 224, 224))
    pad = (1, 1, 1, 1)
    x = b.conv("conv1", x, 1, (3, 3), pads=pad)
    x = b.elementwise("relu1", [x], "relu")
    x = b.upsample("up1", x, (2, 2))
    x = b.conv("conv2", x, 1, (3, 3), pads=pad)
    x = b.elementwise("relu2", [x], "relu")
    x = b.upsample("up2", x, (2, 2))
    x = b.conv("conv3", x, 1, (3, 3), pads=pad)
    x = b.pool("maxpool", x, (2, 2), (2, 2))
    x = b.elementwise("relu3", [x], "relu")
    x = b.conv("conv4", x, 1, (3, 3), pads=pad)
    return b.build([x])


def mlp(dtype: DType = DType.INT16) -> TaskGraph:
    b = GraphBuilder("mlp", dtype)
    x = b.input("x", (1, 256))
    x = b.linear("fc1", x, 1024)
    x = b.elementwise("relu1", [x], "relu")
    x = b.linear("fc2", x, 2048)
    x = b.elementwise("relu2", [x], "relu")
    x = b.linear("fc3", x, 256)
    return b.build([x])


def vae(dtype: DType = DType.INT16) -> TaskGraph:
    b = GraphBuilder("vae", dtype)
    x = b.input("image", (1, 2, 28, 28))
    x = b.conv("enc_conv1", x, 2, (8, 8))  # 28 -> 21
    x = b.elementwise("enc_relu1", [x], "relu")
    x = b.conv("enc_conv2", x, 2, (4, 4))  # 21 -> 18: latent 18 x 18 = 324 per channel
    x = b.elementwise("enc_relu2", [x], "relu")
    z = b.special("sample", x, "exp")  # z = mu + exp(logvar / 2) * eps
    z = b.elementwise("reparam", [z, x], "mul_add")
    y = b.conv_transpose("dec_deconv1", z, 2, (8, 8))  # 18 -> 25
    y = b.elementwise("dec_relu1", [y], "relu")
    y = b.conv_transpose("dec_deconv2", y, 2, (4, 4))  # 25 -> 28
    y = b.special("dec_sigmoid", y, "sigmoid")
    return b.build([y])


def self_attention(dtype: DType = DType.INT16) -> TaskGraph:
    b = GraphBuilder("self-attention", dtype)
    x = b.input("x", (256, 1024))
    q = b.linear("q_proj", x, 1024)
    k = b.linear("k_proj", x, 1024)
    v = b.linear("v_proj", x, 1024)
    s = b.matmul("qk", q, k, transpose_b=True)
    a = b.special("softmax", s, "softmax")
    o = b.matmul("av", a, v)
    return b.build([o])


def gating_network(dtype: DType = DType.INT16) -> TaskGraph:
    b = GraphBuilder("gating-net", dtype)
    x = b.input("x", (32, 4096))
    up = b.linear("up_proj", x, 11008)
    gate = b.linear("gate_proj", x, 11008)
    act = b.special("silu", gate, "silu")
    h = b.elementwise("gate_mul", [up, act], "mul")
    y = b.linear("down_proj", h, 4096)
    return b.build([y])


@dataclass(frozen=True)
class Published:
    """On-board figures from the InTAR repository (U280): InTAR / dataflow / sequential builds."""

    cycles: tuple[int, int, int]
    latency_ms: tuple[float, float, float]
    dsp: tuple[int, int, int]


PUBLISHED_SOURCE = "https://github.com/OswaldHe/InTAR (benchmark/README.md), He et al., FCCM 2025"

PUBLISHED: dict[str, Published] = {
    "self-attention": Published((40520051, 73143507, 348574419), (139.0, 252.0, 1267.0), (43, 51, 52)),
    "mlp": Published((140957, 181996, 1374935), (0.582, 0.742, 4.77), (32, 36, 36)),
    "cnn-4L": Published((118729, 713144, 2215282), (0.546, 2.53, 7.63), (439, 583, 580)),
    "vae": Published((10295, 28383, 306935), (0.145, 0.232, 1.6), (239, 183, 190)),
    "gating-net": Published((48668637, 48668637, 117702892), (211.0, 211.0, 446.0), (109, 109, 104)),
}

PAPER_GEOMEAN_VS_DATAFLOW = 1.8
PAPER_GEOMEAN_VS_SEQUENTIAL = 7.1

KERNELS: dict[str, Callable[[DType], TaskGraph]] = {
    "cnn-4L": cnn_4l,
    "mlp": mlp,
    "vae": vae,
    "self-attention": self_attention,
    "gating-net": gating_network,
}
