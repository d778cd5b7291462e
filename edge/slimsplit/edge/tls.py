"""TLS of the edge's channel: gRPC credentials from the ``[tls]`` settings, and what went wrong in a handshake.

gRPC reports a failed TLS handshake only as a channel that never becomes ready. :func:`diagnose` finds the
reason with one handshake of its own (the standard library's :mod:`ssl`, the same files): an unknown CA, an expired
or misnamed server certificate, a client certificate the server refuses, a plaintext server, or a TLS server that
a plaintext client is talking to; ``None`` when the handshake is not the problem (nothing listens, a timeout).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import grpc

from slimsplit.edge.config import TlsSettings
from slimsplit.errors import ConfigError

#: How long one diagnostic handshake may take.
DIAGNOSE_TIMEOUT_S = 2.0


def split_target(target: str) -> tuple[str, int]:
    """``(host, port)`` of a gRPC target ``HOST:PORT`` or ``[V6]:PORT``."""
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _error(key: str, detail: str, path: Path) -> ConfigError:
    """A :class:`ConfigError` naming ``key`` (renamed to its flag where a flag gave it) and the file."""
    return ConfigError(f"{key}: {detail}", key=key, detail=detail, path=str(path))


def _read(path: Path, key: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _error(key, f"cannot read {path}: {exc.strerror or exc}", path) from exc
    if b"-----BEGIN " not in data:
        raise _error(key, f"{path} is not a PEM file", path)
    return data


def channel_credentials(tls: TlsSettings) -> grpc.ChannelCredentials:
    """gRPC channel credentials for ``tls`` (:class:`ConfigError` naming a file that cannot be read, is not PEM, or
    a certificate that does not match its key)."""
    ca = _read(tls.ca, "tls.ca") if tls.ca is not None else None
    cert = key = None
    if tls.cert is not None and tls.key is not None:
        cert, key = _read(tls.cert, "tls.cert"), _read(tls.key, "tls.key")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(tls.cert, tls.key)
        except ssl.SSLError as exc:
            detail = f"the certificate in {tls.cert} does not match the key in {tls.key} ({exc.reason or exc})"
            raise _error("tls.cert", detail, tls.cert) from exc
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _tls_problem(host: str, port: int, tls: TlsSettings, server_name: str, timeout_s: float) -> str | None:
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca is not None else None)
    context.set_alpn_protocols(["h2"])
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(tls.cert, tls.key)
    trusted = f"the CA in {tls.ca}" if tls.ca is not None else "the system's CAs"
    try:
        with (
            socket.create_connection((host, port), timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as conn,
        ):
            return _refused_after_handshake(conn, tls)
    except ssl.SSLCertVerificationError as exc:
        return (
            f"the server's certificate is not trusted: {exc.verify_message} (checked against {trusted} for the "
            f"name {server_name!r})"
        )
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        upper = reason.upper()
        if "WRONG_VERSION_NUMBER" in upper or "RECORD_LAYER" in upper or "PACKET_LENGTH" in upper:
            return "the server does not speak TLS (a plaintext server?): connect without --tls-ca/--tls-cert"
        if isinstance(exc, ssl.SSLEOFError):
            return "the server closed the connection during the TLS handshake (a plaintext server?)"
        return f"the TLS handshake failed: {reason}"
    except ConnectionResetError:
        return "the server reset the connection during the TLS handshake (a plaintext server?)"
    except OSError:
        return None


def _refused_after_handshake(conn: ssl.SSLSocket, tls: TlsSettings) -> str | None:
    """TLS 1.3: the server checks the client's certificate after the client's side of the handshake is done, and
    closes the connection when it refuses it; an HTTP/2 server that accepts sends its SETTINGS at once."""
    try:
        if conn.recv(1):
            return None
    except TimeoutError:
        return None
    except ssl.SSLError as exc:
        if not isinstance(exc, ssl.SSLEOFError) and "ALERT" not in str(exc.reason or "").upper():
            return f"the TLS connection failed after the handshake: {exc.reason or exc}"
    except OSError:
        pass
    if tls.cert is not None:
        return (
            f"the server refused this device's certificate {tls.cert} (it closed the connection after the TLS "
            "handshake): is it signed by the CA the server trusts (--tls-client-ca there), and still valid?"
        )
    return (
        "the server closed the connection after the TLS handshake: it requires a client certificate (mTLS): give "
        "--tls-cert and --tls-key"
    )


def _plaintext_problem(host: str, port: int, timeout_s: float) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            pass
    except OSError:  # ssl.SSLError included: the server does not speak TLS, or is not there
        return None
    return "the server uses TLS and this client connects in plaintext: give --tls-ca (the CA of its certificate)"


def diagnose(target: str, tls: TlsSettings, server_name: str, timeout_s: float = DIAGNOSE_TIMEOUT_S) -> str | None:
    """Why a connection to ``target`` fails in the TLS handshake (blocking, at most about ``timeout_s``), or
    ``None`` when the handshake is not the problem."""
    try:
        host, port = split_target(target)
    except ValueError:
        return None
    if tls.enabled:
        return _tls_problem(host, port, tls, server_name, timeout_s)
    return _plaintext_problem(host, port, timeout_s)


__all__ = ["DIAGNOSE_TIMEOUT_S", "channel_credentials", "diagnose", "split_target"]
