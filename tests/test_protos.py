"""The wire contract: the committed stubs are fresh and describe the service the server implements."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools (dev extra)")
def test_committed_stubs_are_fresh() -> None:
    """CI's guard: regenerate into a temporary folder, compare byte for byte (gen_protos.py --check)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_service_shape() -> None:
    svc = pb.DESCRIPTOR.services_by_name["SplitInference"]
    assert svc.full_name == "slimsplit.v1.SplitInference"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in svc.methods}
    assert methods == {
        "Infer": (False, False),
        "InferStream": (True, True),
        "PlaneStream": (True, True),
        "Describe": (False, False),
    }
    assert hasattr(pb_grpc, "SplitInferenceStub") and hasattr(pb_grpc, "add_SplitInferenceServicer_to_server")


def test_field_numbers_are_stable() -> None:
    """Fields may only be added within v1: renumbering one would silently break deployed edges."""
    expected = {
        "FeatureFrame": {"protocol_version": 1, "frame_id": 2, "model": 3, "model_version": 4, "mode": 5,
                         "features": 6, "client_send_unix_ns": 7, "top_k": 8, "deadline_ms": 9},
        "Prediction": {"frame_id": 1, "classes": 2, "scores": 3, "labels": 4, "timing": 5, "model": 6,
                       "model_version": 7, "mode": 8},
        "ServerTiming": {"queue_ms": 1, "decode_ms": 2, "tail_ms": 3, "total_ms": 4, "device_cycles": 5,
                         "device_ms": 6, "backend": 7, "batch_size": 8},
        "FrameError": {"frame_id": 1, "code": 2, "status": 3, "message": 4, "error_class": 5, "retry_after_ms": 6},
        "StreamReply": {"prediction": 1, "error": 2},
    }  # fmt: skip
    for message, fields in expected.items():
        desc = pb.DESCRIPTOR.message_types_by_name[message]
        actual = {f.name: f.number for f in desc.fields}
        assert {k: actual.get(k) for k in fields} == fields, message


def test_frame_round_trip() -> None:
    f = pb.FeatureFrame(protocol_version=1, frame_id=2**63, model="m", mode="w8b4", features=b"\xa1\x00", top_k=3)
    assert pb.FeatureFrame.FromString(f.SerializeToString()) == f
