"""The edge's gRPC connection: :class:`EdgeClient` over a ``grpc.aio`` channel, and what a frame costs on the wire.

The frames themselves travel over a transport the client opens per run (:mod:`slimsplit.edge.grpc_transport`): a
reconnecting ``InferStream`` or one unary ``Infer`` call per frame.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio

from slimsplit.edge.auth import TOKEN_KEY, read_token
from slimsplit.edge.channel import open_channel
from slimsplit.edge.config import ClientConfig, balanced, first_address
from slimsplit.edge.grpc_transport import StreamTransport, UnaryTransport
from slimsplit.edge.plane_transport import PlaneTransport
from slimsplit.edge.replicas import ReplicaTransport
from slimsplit.edge.replies import reply_bytes_bound
from slimsplit.edge.status import error_from_rpc, refusal, refused
from slimsplit.edge.tls import diagnose, split_target
from slimsplit.edge.transport import Connection, FrameTransport, Outcome
from slimsplit.errors import Unavailable
from slimsplit.protocol import PROTOCOL_VERSION
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

#: Bytes a frame costs on the wire besides its ``FeatureFrame`` message: the gRPC length prefix (5), the HTTP/2
#: DATA frame header (9) and the send timestamp, which is set when the frame is written (10).
WIRE_FRAMING_BYTES = 5 + 9 + 10


def wire_bytes(frame: pb.FeatureFrame) -> int:
    """What ``frame`` puts on the uplink (before TCP/IP headers), measured before it is sent."""
    size: int = frame.ByteSize() + WIRE_FRAMING_BYTES
    return size


def frame_overhead_bytes(model: str, model_version: str = "", top_k: int = 5) -> int:
    """Bytes a frame of ``model`` costs on the uplink beyond its payload (message fields, gRPC and HTTP/2 framing):
    about 60 with the default bundle, as much as a 1-bit payload, so the controllers plan with it."""
    probe = pb.FeatureFrame(
        protocol_version=PROTOCOL_VERSION,
        frame_id=10_000,
        model=model,
        model_version=model_version,
        mode="w00b0",
        features=b"\0" * 256,
        top_k=top_k,
    )
    return wire_bytes(probe) - 256


class EdgeClient(Connection):
    """A connection to one slimsplit server over gRPC (``async with EdgeClient(config) as client: ...``).

    With ``config.auth.token_file`` the token is read when the channel opens (:func:`~slimsplit.edge.auth.read_token`)
    and sent with every call; a call the server refuses (``UNAUTHENTICATED``, ``PERMISSION_DENIED``) raises that
    error restated to say so (:func:`~slimsplit.edge.status.refused`)."""

    def __init__(self, config: ClientConfig, target: str | None = None) -> None:
        super().__init__(config, target)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    async def __aenter__(self) -> EdgeClient:
        self.open()
        return self

    def open(self) -> None:
        if self._channel is None:
            auth = self.config.auth
            token = read_token(auth.token_file, TOKEN_KEY) if auth.token_file is not None else None
            channel = self.config.channel
            reply_bytes = reply_bytes_bound(self.config.top_k, channel.max_reply_bytes)
            self._channel = open_channel(
                self.target,
                replace(channel, max_reply_bytes=reply_bytes),
                self.config.tls,
                self.server_name,
                token=token,
                origin=self.config.target,
            )
            self._stub = pb_grpc.SplitInferenceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._stub = None

    @property
    def server_name(self) -> str:
        """The name the server's certificate must carry: ``tls.server_name``, else the host of the configured
        target (also when this connection dials another address, a local proxy; the first one of several
        replicas)."""
        if self.config.tls.server_name:
            return self.config.tls.server_name
        first = first_address(self.config.target)
        try:
            return split_target(first)[0]
        except ValueError:
            return first

    async def handshake_problem(self) -> str | None:
        """What fails in the TLS handshake with the server (or a plaintext client's with a TLS server); ``None``
        when that is not the problem."""
        return await asyncio.to_thread(diagnose, first_address(self.target), self.config.tls, self.server_name)

    def _handshake_error(self, problem: str) -> Unavailable:
        return Unavailable(f"cannot connect to the server at {self.target}: {problem}", target=self.target)

    async def _until_ready(self) -> None:
        """Wait for the channel to be ready; at its first failure, fail at once if the handshake is the problem."""
        assert self._channel is not None
        checked = False
        state = self._channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE and not checked:
                checked = True
                problem = await self.handshake_problem()
                if problem is not None:
                    raise self._handshake_error(problem)
            await self._channel.wait_for_state_change(state)
            state = self._channel.get_state(try_to_connect=True)

    @property
    def stub(self) -> Any:
        if self._stub is None:
            raise Unavailable("the client is not open (use 'async with EdgeClient(...)')")
        return self._stub

    # ----------------------------------------------------------------------------------------------- calls
    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the channel is connected; :class:`Unavailable` naming the address otherwise, and the
        certificate problem when the TLS handshake fails (at once, not after the timeout)."""
        self.open()
        assert self._channel is not None
        timeout = self.config.connect_timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(self._until_ready(), timeout)
        except TimeoutError:
            problem = await self.handshake_problem()
            if problem is not None:
                raise self._handshake_error(problem) from None
            raise Unavailable(
                f"cannot reach a server at {self.target} within {timeout:g} s (is slimsplit-server running there?)",
                target=self.target,
            ) from None

    async def describe(self, model: str = "", timeout_s: float = 5.0) -> pb.DescribeResponse:
        try:
            response: pb.DescribeResponse = await self.stub.Describe(pb.DescribeRequest(model=model), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            error = error_from_rpc(exc, target=self.target)
            raise (refused(error, self.config.target) if refusal(error) else error) from None
        return response

    def open_transport(self, *, unary: bool = False, planes: bool = False, seed: int | None = None) -> FrameTransport:
        """A reconnecting ``InferStream`` (opened lazily by the first ``submit``), or unary ``Infer`` calls (gRPC
        balances them over the replicas of a target that names several), or with ``planes`` a reconnecting
        ``PlaneStream`` (:class:`~slimsplit.edge.plane_transport.PlaneTransport`; one, whatever the replicas). Over
        several replicas (``config.stream_count`` > 1): that many streams, a frame whose stream broke re-sent once
        on another (:class:`~slimsplit.edge.replicas.ReplicaTransport`)."""
        if planes:
            return self.open_stream(seed=seed, kind=PlaneTransport)
        if unary:
            return UnaryTransport(self.stub, target=self.config.target, top_k=self.config.top_k)
        count = self.config.stream_count if balanced(self.target) else 1
        if count > 1:
            return ReplicaTransport([self.open_stream(seed=None if seed is None else seed + i) for i in range(count)])
        return self.open_stream(seed=seed)

    def open_stream(self, *, seed: int | None = None, kind: type[StreamTransport] = StreamTransport) -> StreamTransport:
        """A reconnecting frame stream on this channel (opened lazily by the first ``submit``): an ``InferStream``,
        or a ``PlaneStream`` with ``kind=PlaneTransport``."""
        return kind(
            self.stub,
            self.config.reconnect,
            seed=seed,
            target=self.config.target,
            channel=self._channel,
            top_k=self.config.top_k,
        )

    async def infer_outcome(self, frame: pb.FeatureFrame, deadline_s: float | None) -> Outcome:
        """One unary ``Infer``, awaited; a failure is the outcome's error (gRPC retries UNAVAILABLE)."""
        return await UnaryTransport(self.stub, top_k=self.config.top_k).call(frame, deadline_s)

    async def infer(self, frame: pb.FeatureFrame, deadline_s: float | None = None) -> pb.Prediction:
        """One unary ``Infer``; raises the :mod:`slimsplit.errors` class of the failure."""
        outcome = await self.infer_outcome(frame, deadline_s)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.prediction is not None
        return outcome.prediction


__all__ = ["WIRE_FRAMING_BYTES", "EdgeClient", "frame_overhead_bytes", "wire_bytes"]
