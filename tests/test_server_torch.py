"""The PyTorch backend on the shipped bundle: same predictions as ONNX Runtime, also over gRPC."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from slimsplit.bundle import Bundle, default_bundle_path, default_samples_path
from slimsplit.codec import decode_features, encode_features
from slimsplit.errors import BundleError
from slimsplit.server.config import BackendConfig, GrpcConfig, ServerConfig
from slimsplit.server.core import InferenceCore, InferRequest

pytest.importorskip("torch")

MODES = ("w2b4", "w8b8", "w16b2")


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    path = default_bundle_path()
    if not (path / "manifest.json").is_file():
        pytest.skip("the default bundle is not built yet")
    b = Bundle.open(path)
    if b.checkpoint_path is None:
        pytest.skip("the default bundle has no torch checkpoint")
    return b


@pytest.fixture(scope="module")
def frames(bundle: Bundle) -> dict[str, list[bytes]]:
    """Real features: sample images through the bundle's ONNX encoder, then the codec (what an edge sends)."""
    m = bundle.manifest
    images = np.load(default_samples_path())["images"][:8]  # NHWC uint8
    mean = np.asarray(m.input.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(m.input.std, dtype=np.float32)[None, :, None, None]
    x = ((images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) - mean) / std
    enc = ort.InferenceSession(str(bundle.encoder_path), providers=["CPUExecutionProvider"])
    out: dict[str, list[bytes]] = {}
    for mode in MODES:
        spec = m.mode(mode)
        (z,) = enc.run(None, {m.encoder.image_input: x, m.encoder.width_input: np.array([spec.width], dtype=np.int64)})
        out[mode] = [encode_features(z[i], spec.bits) for i in range(len(z))]
    return out


def _logits(core: InferenceCore, name: str, frames: dict[str, list[bytes]]) -> dict[str, npt.NDArray[np.float32]]:
    async def go() -> dict[str, npt.NDArray[np.float32]]:
        try:
            out = {}
            for mode, fs in frames.items():
                results = [await core.infer(InferRequest(model=name, mode=mode, features=f)) for f in fs]
                assert all(r.timing.backend == core.backend_name for r in results)
                out[mode] = np.stack([r.logits for r in results])
            return out
        finally:
            await core.aclose()

    return asyncio.run(go())


def test_torch_and_onnxruntime_backends_agree(bundle: Bundle, frames: dict[str, list[bytes]]) -> None:
    name = bundle.manifest.name
    base = ServerConfig(models=(bundle.root,))
    ort_logits = _logits(InferenceCore.from_config(base), name, frames)
    torch_core = InferenceCore.from_config(
        replace(base, backend=BackendConfig(name="torch", device="cpu", intra_op_threads=0))
    )
    assert torch_core.backend_name == "torch"
    torch_logits = _logits(torch_core, name, frames)
    for mode in MODES:
        np.testing.assert_allclose(torch_logits[mode], ort_logits[mode], rtol=1e-3, atol=1e-3)
        assert (torch_logits[mode].argmax(1) == ort_logits[mode].argmax(1)).all()


def test_torch_backend_over_grpc(bundle: Bundle, frames: dict[str, list[bytes]]) -> None:
    import grpc

    from slimsplit.server.app import ServerThread
    from slimsplit.v1 import slimsplit_pb2 as pb
    from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

    config = ServerConfig(
        models=(bundle.root,),
        backend=BackendConfig(name="torch", intra_op_threads=0),
        grpc=GrpcConfig(port=0),
    )
    with ServerThread(config) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        f = frames["w8b8"][0]
        pred = stub.Infer(
            pb.FeatureFrame(protocol_version=1, model=bundle.manifest.name, mode="w8b8", features=f),
            timeout=30,
        )
        import torch

        from slimsplit.server.models import load_split_model

        model = load_split_model(bundle.checkpoint_path or "")
        with torch.inference_mode():
            ref = model.tail_forward(torch.from_numpy(decode_features(f).array[None]), 8).numpy()[0]
        assert pred.classes[0] == int(ref.argmax()) and pred.timing.backend == "torch"


def test_torch_backend_needs_a_checkpoint(tmp_path: object) -> None:
    from pathlib import Path

    from fixtures_bundle import write_tiny_bundle

    from slimsplit.server.backends.torch_backend import TorchBackend

    tiny = write_tiny_bundle(Path(str(tmp_path)) / "b")
    with pytest.raises(BundleError, match="torch checkpoint"):
        TorchBackend(BackendConfig(name="torch", device="cpu", intra_op_threads=0)).load(Bundle.open(tiny.root))
