"""A Triton model repository generated from a slimsplit bundle: one model per tail file of the manifest.

Each tail becomes the Triton model ``w<width>`` (``tails/w16.onnx`` -> ``w16``), input ``features`` float32
``[width, H, W]`` and output ``logits`` float32 ``[classes]``, with Triton's dynamic batcher in front:

* ``onnxruntime`` kind (Triton's ONNX Runtime backend, where the server has one): ``<model>/1/model.onnx`` and a
  ``config.pbtxt`` with ``platform: "onnxruntime_onnx"`` and the ORT thread counts as backend parameters;
* ``python`` kind (the Python backend, all that the ``nvidia-pytriton`` wheel's server has): ``<model>/1/model.py``
  running the same ONNX file through ``onnxruntime`` (:data:`PYTHON_MODEL`) beside ``<model>/1/model.onnx``.

Pure: no Triton needed to generate or inspect a repository (tests/test_peer.py checks the layout).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["python", "onnxruntime"]
Device = Literal["cpu", "gpu"]

INPUT = "features"
OUTPUT = "logits"

PYTHON_MODEL = '''"""Triton Python-backend model (bench/peer_repo.py wrote it): one slimsplit tail through onnxruntime.

Triton's dynamic batcher hands execute() several requests; their features run as one ORT batch."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if params.get("device", "cpu") == "gpu":
            providers.insert(0, "CUDAExecutionProvider")
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), opts, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "features").as_numpy() for r in requests]
        x = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        (logits,) = self.session.run([self.output], {self.input: np.ascontiguousarray(x, dtype=np.float32)})
        responses = []
        start = 0
        for a in arrays:
            out = pb_utils.Tensor("logits", logits[start : start + len(a)].astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += len(a)
        return responses
'''


@dataclass(frozen=True)
class RepoOptions:
    """How the generated models serve: batching, threads, instances, device."""

    kind: Kind = "python"
    max_batch_size: int = 64  # 0 or 1: no batching (Triton's max_batch_size 0 = no batch dimension; we keep 1)
    max_queue_delay_us: int = 0
    threads: int = 1  # ORT intra-op threads per instance
    instances: int = 1
    device: Device = "cpu"
    batching: bool = True  # False: no dynamic_batching block (every request runs alone)


@dataclass(frozen=True)
class TailModel:
    """One Triton model of the repository: its name, the tail file it serves, its feature shape."""

    name: str
    tail: Path
    channels: int
    height: int
    width: int
    classes: int
    modes: tuple[str, ...]


def tail_models(bundle: Path) -> list[TailModel]:
    """The Triton models for ``bundle``: one per distinct tail file of its manifest, narrowest first."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    feature = manifest["feature"]
    classes = len(manifest["classes"])
    by_tail: dict[str, tuple[int, list[str]]] = {}
    for mode in manifest["modes"]:
        width, names = by_tail.setdefault(mode["tail"], (int(mode["width"]), []))
        if width != int(mode["width"]):
            raise ValueError(f"manifest: tail {mode['tail']} is used with widths {width} and {mode['width']}")
        names.append(mode["name"])
    models = [
        TailModel(
            name=f"w{width}",
            tail=bundle / tail,
            channels=width,
            height=int(feature["height"]),
            width=int(feature["width"]),
            classes=classes,
            modes=tuple(names),
        )
        for tail, (width, names) in by_tail.items()
    ]
    return sorted(models, key=lambda m: m.channels)


def config_pbtxt(model: TailModel, options: RepoOptions) -> str:
    """The ``config.pbtxt`` of ``model`` (protobuf text format of Triton's ModelConfig)."""
    batch = max(1, options.max_batch_size)
    lines = [f'name: "{model.name}"']
    if options.kind == "onnxruntime":
        lines.append('platform: "onnxruntime_onnx"')
    else:
        lines.append('backend: "python"')
    lines += [
        f"max_batch_size: {batch}",
        "input [",
        f'  {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ {model.channels}, {model.height}, {model.width} ] }}',
        "]",
        "output [",
        f'  {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {model.classes} ] }}',
        "]",
        "instance_group [",
        f"  {{ count: {options.instances} kind: {'KIND_GPU' if options.device == 'gpu' else 'KIND_CPU'} }}",
        "]",
    ]
    if options.batching and batch > 1:
        lines += [
            "dynamic_batching {",
            f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
            "}",
        ]
    params: dict[str, str] = {"device": options.device}
    if options.kind == "onnxruntime":
        params |= {"intra_op_thread_count": str(options.threads), "inter_op_thread_count": "1"}
    else:
        params |= {"intra_op_threads": str(options.threads)}
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def write_repository(bundle: Path, out: Path, options: RepoOptions = RepoOptions()) -> list[TailModel]:
    """Write the model repository for ``bundle`` into ``out`` (created; models already there are replaced)."""
    models = tail_models(bundle)
    out.mkdir(parents=True, exist_ok=True)
    for model in models:
        folder = out / model.name
        if folder.exists():
            shutil.rmtree(folder)
        version = folder / "1"
        version.mkdir(parents=True)
        shutil.copyfile(model.tail, version / "model.onnx")
        if options.kind == "python":
            (version / "model.py").write_text(PYTHON_MODEL)
        (folder / "config.pbtxt").write_text(config_pbtxt(model, options))
    return models
