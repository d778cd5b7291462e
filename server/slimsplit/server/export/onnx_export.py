"""ONNX export of a :class:`SplitModel`: one width-switchable encoder graph and one tail graph per width.

The encoder graph takes ``image`` [N,3,H,W] and ``width`` [1] (int64) and returns ``features`` [N,width,H',W'].
The width input slices the output channels of the bottleneck's last convolution *inside* the graph (two
``Slice`` nodes on its weight and bias), so one ONNX Runtime session serves every mode and a mode switch is
only a different value fed to ``width``: no session creation, no file I/O, no weight allocation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from slimsplit.errors import BundleError
from slimsplit.server.models import SplitModel

OPSET = 17


class _EncoderFullWidth(nn.Module):
    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.head = model.head
        self.encoder = model.encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(self.head(image))
        return out


class _TailAtWidth(nn.Module):
    def __init__(self, model: SplitModel, width: int) -> None:
        super().__init__()
        self.model = model
        self.width = width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.tail_forward(features, self.width)


def _export(module: nn.Module, dummy: torch.Tensor, path: Path, in_name: str, out_name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            input_names=[in_name],
            output_names=[out_name],
            dynamic_axes={in_name: {0: "batch"}, out_name: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _make_width_switchable(path: Path, output: str, width_input: str, max_width: int) -> None:
    """Rewrite the encoder graph so that its last Conv computes only the first ``width`` output channels."""
    model = onnx.load(str(path))
    graph = model.graph
    producers = [n for n in graph.node if output in n.output]
    if len(producers) != 1 or producers[0].op_type != "Conv" or len(producers[0].input) < 2:
        raise BundleError(f"{path}: expected the encoder output {output!r} to come from one Conv node")
    conv = producers[0]
    inits = {i.name for i in graph.initializer}
    for name in conv.input[1:]:
        if name not in inits:
            raise BundleError(f"{path}: the last Conv's weight/bias {name!r} is not an initializer")
    graph.input.append(helper.make_tensor_value_info(width_input, TensorProto.INT64, [1]))
    graph.initializer.extend(
        [
            helper.make_tensor("slim_starts", TensorProto.INT64, [1], [0]),
            helper.make_tensor("slim_axes", TensorProto.INT64, [1], [0]),
        ]
    )
    new_nodes = []
    for k, name in enumerate(list(conv.input[1:]), start=1):
        sliced = f"{name}_slim"
        new_nodes.append(
            helper.make_node("Slice", [name, "slim_starts", width_input, "slim_axes"], [sliced], name=f"slim_slice_{k}")
        )
        conv.input[k] = sliced
    # insert the Slice nodes right before the Conv to keep the graph topologically sorted
    nodes = list(graph.node)
    pos = nodes.index(conv)
    del graph.node[:]
    graph.node.extend(nodes[:pos] + new_nodes + nodes[pos:])
    for out in graph.output:
        if out.name == output:
            out.type.tensor_type.shape.dim[1].ClearField("dim_value")
            out.type.tensor_type.shape.dim[1].dim_param = "width"
    del graph.value_info[:]
    model.doc_string = f"slimsplit encoder: width input in [1, {max_width}] selects the bottleneck channels"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_encoder(
    model: SplitModel,
    path: Path,
    *,
    image_input: str = "image",
    width_input: str = "width",
    output: str = "features",
) -> None:
    if model.config.bottleneck.kind != "slices":
        raise BundleError(
            f"the width-switchable encoder export supports bottleneck kind 'slices' only, "
            f"not {model.config.bottleneck.kind!r}"
        )
    dummy = torch.zeros(1, *model.config.input_shape)
    _export(_EncoderFullWidth(model), dummy, path, image_input, output)
    _make_width_switchable(path, output, width_input, model.config.bottleneck.max_width)


def export_tail(
    model: SplitModel, width: int, path: Path, *, input_name: str = "features", output: str = "logits"
) -> None:
    _, h, w = model.feature_shape
    _export(_TailAtWidth(model, width), torch.zeros(1, width, h, w), path, input_name, output)


def export_backbone(backbone: nn.Module, input_shape: tuple[int, int, int], path: Path) -> None:
    """The unsplit backbone: ``image`` [N,C,H,W] -> ``logits``."""
    _export(backbone, torch.zeros(1, *input_shape), path, "image", "logits")
