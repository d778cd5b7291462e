"""The one ``grpc.aio`` server interceptor that authenticates every call (the health service excepted).

It wraps each method handler: before the method runs, the call's bearer token (metadata ``authorization: Bearer
<token>``) and the device of its client certificate (the auth context gRPC filled after verifying it) go to
:meth:`Guard.authenticate`; a refusal ends the call with ``UNAUTHENTICATED`` or ``PERMISSION_DENIED`` (the message
never holds the token). The device admitted is :data:`current_device` while the method runs, so the servicer can
check each frame against the device's models and limits. A streaming call is registered with the guard: when its
device is revoked the stream ends with ``PERMISSION_DENIED`` at once, from outside the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from slimsplit.errors import SlimsplitError
from slimsplit.protocol import AUTHORIZATION_KEY
from slimsplit.server.handlers import Behavior, behavior_of, rebuilt, replies
from slimsplit.server.security.guard import DeviceState, Guard
from slimsplit.server.security.identity import IdentityCache
from slimsplit.server.status import abort

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # not subscriptable at run time
    _Interceptor = grpc.aio.ServerInterceptor

#: The device admitted for the call being served (None: authentication is off, or a call it does not cover).
current_device: ContextVar[DeviceState | None] = ContextVar("slimsplit_current_device", default=None)

#: Methods open to every caller: the health service (probes carry no token).
OPEN_METHODS: tuple[str, ...] = ("/grpc.health.v1.Health/",)
#: The longest ``authorization`` value read (a longer one is no valid token).
MAX_AUTHORIZATION_CHARS = 4096


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata, or None."""
    for key, value in metadata or ():
        if key != AUTHORIZATION_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if len(text) > MAX_AUTHORIZATION_CHARS:
            return None
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


class AuthInterceptor(_Interceptor):
    """See the module docstring."""

    def __init__(self, guard: Guard, *, open_methods: Collection[str] = OPEN_METHODS) -> None:
        self.guard = guard
        self._open = tuple(open_methods)
        self._identities = IdentityCache()
        self._aborts: set[asyncio.Task[None]] = set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(self._open):
            return handler
        token = bearer_token(details.invocation_metadata)
        behavior = behavior_of(handler)
        if handler.response_streaming:
            return rebuilt(handler, self._streaming(behavior, token, method))
        return rebuilt(handler, self._unary(behavior, token, method))

    async def _admit(self, token: str | None, method: str, context: Context) -> DeviceState:
        cert_device = self._identities.device_id(context.auth_context()) if self.guard.mtls else None
        try:
            return self.guard.authenticate(token, cert_device, method=method, peer=context.peer())
        except SlimsplitError as exc:
            await abort(context, exc)

    def _unary(self, behavior: Behavior, token: str | None, method: str) -> Behavior:
        async def call(request: Any, context: Context) -> Any:
            current_device.set(await self._admit(token, method, context))  # the call's own task: no reset needed
            return await behavior(request, context)

        return call

    def _streaming(self, behavior: Behavior, token: str | None, method: str) -> Behavior:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            state = await self._admit(token, method, context)
            try:
                ticket = self.guard.open_stream(state, lambda why: self._end(context, why))
            except SlimsplitError as exc:
                await abort(context, exc)
            current_device.set(state)
            try:
                async for reply in replies(behavior(request, context)):
                    yield reply
            finally:
                ticket.close()

        return call

    def _end(self, context: Context, why: SlimsplitError) -> None:
        """End a stream from outside its handler with the status of ``why`` (runs on the server's loop)."""

        async def end() -> None:
            with contextlib.suppress(Exception):  # AbortError, or the call already ended
                await abort(context, why)

        task = asyncio.get_running_loop().create_task(end())
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)


__all__ = ["MAX_AUTHORIZATION_CHARS", "OPEN_METHODS", "AuthInterceptor", "bearer_token", "current_device"]
