"""Payloads encoded once, before a sweep runs: the generator then only sends bytes (it is not the bottleneck).

Frame ``i`` of the source is encoded in mode ``modes[i % len(modes)]`` by one encoder session; each becomes a
serialized ``FeatureFrame`` (its frame id is set per request by the sender, see :func:`with_frame_id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slimsplit.edge.pipeline import Encoder
from slimsplit.edge.sources import FrameSource
from slimsplit.protocol import PROTOCOL_VERSION
from slimsplit.v1 import slimsplit_pb2 as pb

#: Distinct frames encoded (the sender cycles through them).
DEFAULT_PAYLOADS = 32


@dataclass(frozen=True)
class Payloads:
    """Serialized requests (frame id 0) and their modes and feature bytes, index for index."""

    model: str
    requests: tuple[bytes, ...]
    modes: tuple[str, ...]
    sizes: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.requests)


def precompute(
    encoder: Encoder,
    source: FrameSource,
    modes: Sequence[str],
    *,
    model: str,
    model_version: str = "",
    count: int = DEFAULT_PAYLOADS,
    top_k: int = 5,
) -> Payloads:
    """``count`` requests from the source's first frames (cycled), modes in turn."""
    requests, used, sizes = [], [], []
    for i, frame in enumerate(source.take(count, cycle=True)):
        mode = modes[i % len(modes)]
        encoder.set_mode(mode)
        encoded = encoder.encode(frame.image)
        payload = encoded.payload
        msg = pb.FeatureFrame(
            protocol_version=PROTOCOL_VERSION,
            frame_id=0,
            model=model,
            model_version=model_version,
            mode=mode,
            features=payload,
            top_k=top_k,
        )
        requests.append(msg.SerializeToString())
        used.append(mode)
        sizes.append(len(payload))
    return Payloads(model, tuple(requests), tuple(used), tuple(sizes))


def with_frame_id(request: bytes, frame_id: int) -> bytes:
    """``request`` (a serialized ``FeatureFrame`` with frame id 0) with its frame id set: a serialized message is
    merged by appending another, and the last value of a scalar field wins, so the payload is not re-serialized."""
    return request + pb.FeatureFrame(frame_id=frame_id).SerializeToString()


__all__ = ["DEFAULT_PAYLOADS", "Payloads", "precompute", "with_frame_id"]
