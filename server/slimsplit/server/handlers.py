"""Rebuilding a gRPC method handler around a new behavior, for the server's interceptors.

A ``grpc.RpcMethodHandler`` has one of four kinds (unary or streaming request, unary or streaming response) and keeps
its behavior under the attribute of that kind; :func:`behavior_of` reads it and :func:`rebuilt` makes a handler of the
same kind and serializers around another behavior. :func:`replies` iterates what a streaming-response behavior gives:
an async generator's replies, or nothing from one that writes with ``context.write`` and returns a coroutine (the
standard health service's ``Watch``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]


def behavior_of(handler: grpc.RpcMethodHandler[Any, Any]) -> Behavior:
    """The behavior of ``handler`` (of whichever kind it is)."""
    if handler.request_streaming:
        found = handler.stream_stream if handler.response_streaming else handler.stream_unary
    else:
        found = handler.unary_stream if handler.response_streaming else handler.unary_unary
    assert found is not None
    behavior: Behavior = found
    return behavior


def rebuilt(
    handler: grpc.RpcMethodHandler[Any, Any],
    behavior: Behavior,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s kind and serializers around ``behavior`` (``request_deserializer`` replaces the
    handler's when given)."""
    factories: dict[tuple[bool, bool], Any] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    factory = factories[(handler.request_streaming, handler.response_streaming)]
    made: grpc.RpcMethodHandler[Any, Any] = factory(
        behavior,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return made


async def replies(result: Any) -> AsyncIterator[Any]:
    """The replies of a streaming-response behavior's ``result`` (none from one that writes with context.write)."""
    if inspect.isasyncgen(result):
        async for reply in result:
            yield reply
    else:
        await result


__all__ = ["Behavior", "behavior_of", "rebuilt", "replies"]
