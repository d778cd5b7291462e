"""The client's gRPC channel: message limits, keepalive, re-dial backoff, the unary retry policy, TLS and the token.

A bearer token travels as call credentials (``authorization: Bearer ...`` on every call): over TLS composed with
the TLS credentials; in plaintext only to a server on loopback, composed with gRPC's local credentials (which accept
a plaintext connection to a loopback address and nothing else); to any other host in plaintext it is refused
(:func:`~slimsplit.edge.auth.check_token_route`, for every address of the target).

A target that names several replicas (``ipv4:A,B``, ``dns:///name:port``; :func:`~slimsplit.edge.config.balanced`)
gets gRPC's ``round_robin`` policy (``loadBalancingConfig`` in the service config): a call goes to the next replica
whose connection is ready, a replica that went away is skipped while the channel re-dials it."""

from __future__ import annotations

import json

import grpc
import grpc.aio

from slimsplit.edge.auth import check_token_route
from slimsplit.edge.config import ChannelConfig, TlsSettings, balanced, target_addresses
from slimsplit.edge.tls import channel_credentials
from slimsplit.protocol import SERVICE_NAME


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def service_config(config: ChannelConfig, *, balance: bool = False) -> str:
    """The JSON service config: a retry policy for ``Infer`` and ``Describe`` (gRPC never retries streams), and the
    bound on a frame's reply (``maxResponseMessageBytes`` of ``Infer`` and ``InferStream``: ``max_reply_bytes``; a
    larger reply fails its call with ``RESOURCE_EXHAUSTED`` before it is parsed). ``Describe`` answers, which carry
    whole manifests, are bounded by ``max_message_bytes`` alone.

    ``retry.max_attempts == 1`` turns retries off (gRPC rejects a policy with fewer than 2 attempts).
    ``balance``: calls are spread over the target's addresses by ``round_robin`` (else gRPC's default,
    ``pick_first``).
    """
    retry = config.retry

    def method(*names: str) -> dict[str, object]:
        return {"name": [{"service": SERVICE_NAME, "method": name} for name in names]}

    infer, describe, stream = method("Infer"), method("Describe"), method("InferStream")
    if retry.max_attempts >= 2:
        policy = {
            "maxAttempts": retry.max_attempts,
            "initialBackoff": _duration(retry.initial_backoff_s),
            "maxBackoff": _duration(retry.max_backoff_s),
            "backoffMultiplier": retry.multiplier,
            "retryableStatusCodes": list(retry.retryable_status_codes),
        }
        infer["retryPolicy"] = describe["retryPolicy"] = policy
    infer["maxResponseMessageBytes"] = stream["maxResponseMessageBytes"] = config.max_reply_bytes
    doc: dict[str, object] = {"methodConfig": [infer, describe, stream]}
    if balance:
        doc["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(doc)


def channel_options(config: ChannelConfig, *, balance: bool = False) -> list[tuple[str, str | int]]:
    """Channel arguments (the server must allow pings at least every ``keepalive_time_ms``); ``balance``: see
    :func:`service_config`."""
    options: list[tuple[str, str | int]] = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(config.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", config.initial_reconnect_backoff_ms),
        ("grpc.max_reconnect_backoff_ms", config.max_reconnect_backoff_ms),
        ("grpc.enable_retries", 1 if config.retry.max_attempts > 1 else 0),
        ("grpc.service_config", service_config(config, balance=balance)),
    ]
    return options


def insecure_channel(target: str, config: ChannelConfig) -> grpc.aio.Channel:
    """A plaintext ``grpc.aio`` channel to ``target``."""
    return grpc.aio.insecure_channel(target, options=channel_options(config, balance=balanced(target)))


def credentials(
    tls: TlsSettings, token: str | None = None, *, target: str = "", origin: str | None = None
) -> grpc.ChannelCredentials | None:
    """The channel credentials for ``tls`` and ``token``; ``None`` for a plaintext channel without a token.

    A plaintext channel with a token needs ``target`` (the address dialled) and ``origin`` (the server's own
    address, when ``target`` is a local proxy in front of it) on loopback: :class:`~slimsplit.errors.ConfigError`
    otherwise, the token would travel in clear."""
    if tls.enabled:
        ssl_creds = channel_credentials(tls)
        if token is None:
            return ssl_creds
        return grpc.composite_channel_credentials(ssl_creds, grpc.access_token_call_credentials(token))
    if token is None:
        return None
    check_token_route(*(a for t in (origin, target) if t for a in target_addresses(t)))
    local = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    return grpc.composite_channel_credentials(local, grpc.access_token_call_credentials(token))


def open_channel(
    target: str,
    config: ChannelConfig,
    tls: TlsSettings,
    server_name: str | None = None,
    *,
    token: str | None = None,
    origin: str | None = None,
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target``: over TLS when ``tls`` is on (``server_name``: the name the server's
    certificate must carry when it is not the host of ``target``, e.g. through a local proxy), else plaintext;
    ``token``: the device's bearer token, sent with every call (see :func:`credentials`; ``origin``: the server's
    own address when ``target`` is a proxy in front of it)."""
    creds = credentials(tls, token, target=target, origin=origin)
    if creds is None:
        return insecure_channel(target, config)
    options = channel_options(config, balance=balanced(target))
    name = tls.server_name or server_name
    if tls.enabled and name:
        options.append(("grpc.ssl_target_name_override", name))
    return grpc.aio.secure_channel(target, creds, options=options)


__all__ = ["channel_options", "credentials", "insecure_channel", "open_channel", "service_config"]
