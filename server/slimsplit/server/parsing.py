"""Undecodable requests to the services slimsplit registers but does not write (health, reflection) get
``INVALID_ARGUMENT``, not gRPC's ``UNKNOWN "Unexpected <class 'DecodeError'>…"`` with a logged traceback.

:class:`UndecodableRequests` is a ``grpc.aio`` server interceptor: it wraps the request deserializer of every method
that has one (slimsplit's own methods take the raw bytes and parse them themselves) so that a body that does not
parse becomes an :class:`Undecodable` marker, and the method then ends with ``INVALID_ARGUMENT`` before it runs (a
stream: when that message is reached).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from slimsplit.server.handlers import Behavior, behavior_of, rebuilt, replies

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor


class Undecodable:
    """A request body that did not parse (its size only: the bytes are not kept)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _safe(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception:
            return Undecodable(len(raw))

    return parse


async def _refuse(context: Context, method: str, bad: Undecodable) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"the request to {method[:200]} is not a valid message ({bad.size} bytes)"
    )


class UndecodableRequests(_Interceptor):
    """See the module docstring."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = details.method
        inner = behavior_of(handler)
        if handler.request_streaming:

            async def checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, Undecodable):
                        await _refuse(context, method, request)
                    yield request

            if handler.response_streaming:

                async def stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
                    async for reply in replies(inner(checked(requests, context), context)):
                        yield reply

                behavior: Behavior = stream_stream
            else:

                async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
                    return await inner(checked(requests, context), context)

                behavior = stream_unary
        elif handler.response_streaming:

            async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                if isinstance(request, Undecodable):
                    await _refuse(context, method, request)
                async for reply in replies(inner(request, context)):
                    yield reply

            behavior = unary_stream
        else:

            async def unary_unary(request: Any, context: Context) -> Any:
                if isinstance(request, Undecodable):
                    await _refuse(context, method, request)
                return await inner(request, context)

            behavior = unary_unary
        return rebuilt(handler, behavior, request_deserializer=_safe(handler.request_deserializer))


__all__ = ["Undecodable", "UndecodableRequests"]
