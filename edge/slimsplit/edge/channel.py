"""The client's gRPC channel: message limits, keepalive, re-dial backoff, the unary retry policy and TLS."""

from __future__ import annotations

import json

import grpc
import grpc.aio

from slimsplit.edge.config import ChannelConfig, TlsSettings
from slimsplit.edge.tls import channel_credentials
from slimsplit.protocol import SERVICE_NAME


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def service_config(config: ChannelConfig) -> str:
    """The JSON service config: a retry policy for ``Infer`` and ``Describe`` (gRPC never retries streams).

    ``retry.max_attempts == 1`` turns retries off (gRPC rejects a policy with fewer than 2 attempts).
    """
    retry = config.retry
    method: dict[str, object] = {
        "name": [
            {"service": SERVICE_NAME, "method": "Infer"},
            {"service": SERVICE_NAME, "method": "Describe"},
        ]
    }
    if retry.max_attempts >= 2:
        method["retryPolicy"] = {
            "maxAttempts": retry.max_attempts,
            "initialBackoff": _duration(retry.initial_backoff_s),
            "maxBackoff": _duration(retry.max_backoff_s),
            "backoffMultiplier": retry.multiplier,
            "retryableStatusCodes": list(retry.retryable_status_codes),
        }
    return json.dumps({"methodConfig": [method]})


def channel_options(config: ChannelConfig) -> list[tuple[str, str | int]]:
    """Channel arguments (the server must allow pings at least every ``keepalive_time_ms``)."""
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
        ("grpc.service_config", service_config(config)),
    ]
    return options


def insecure_channel(target: str, config: ChannelConfig) -> grpc.aio.Channel:
    """A plaintext ``grpc.aio`` channel to ``target``."""
    return grpc.aio.insecure_channel(target, options=channel_options(config))


def open_channel(
    target: str, config: ChannelConfig, tls: TlsSettings, server_name: str | None = None
) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target``: over TLS when ``tls`` is on (``server_name``: the name the server's
    certificate must carry when it is not the host of ``target``, e.g. through a local proxy), else plaintext."""
    if not tls.enabled:
        return insecure_channel(target, config)
    options = channel_options(config)
    name = tls.server_name or server_name
    if name:
        options.append(("grpc.ssl_target_name_override", name))
    return grpc.aio.secure_channel(target, channel_credentials(tls), options=options)


__all__ = ["channel_options", "insecure_channel", "open_channel", "service_config"]
