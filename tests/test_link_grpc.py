"""gRPC (HTTP/2 over TCP) runs through the shaping proxy unchanged, and is shaped by it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from slimsplit.link.proxy import ProxyConfig, proxy_in_thread
from slimsplit.link.shaping import LinkConfig
from slimsplit.link.trace import Trace

RATE = 4e6


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), srv)
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(_echo, lambda b: b, lambda b: b)},
    )
    srv.add_generic_rpc_handlers((handler,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield ("127.0.0.1", port)
    finally:
        srv.stop(None).wait(5)


def test_grpc_through_the_proxy(server: tuple[str, int]) -> None:
    link = LinkConfig(uplink=Trace.constant(RATE), downlink=Trace.constant(20e6), delay_ms=5.0)
    payload = os.urandom(200_000)
    with (
        proxy_in_thread(ProxyConfig(upstream=server, link=link)) as (host, port),
        grpc.insecure_channel(f"{host}:{port}") as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        echo = channel.unary_unary("/test.Echo/Echo", lambda b: b, lambda b: b)
        t = time.monotonic()
        got = echo(payload, timeout=20)
        elapsed = time.monotonic() - t
    assert got == payload
    # 200 kB cannot cross a 4 Mbit/s uplink faster than 0.4 s (a lower bound: load can only slow it down)
    assert elapsed >= 0.9 * len(payload) * 8 / RATE
