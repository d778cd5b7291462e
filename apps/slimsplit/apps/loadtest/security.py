"""Who each emulated client is, and the credentials of the server the load tester starts.

* ``--start-server`` (unless ``--no-tls``): a temporary development PKI (:func:`slimsplit.apps.certs.make_dev_pki`)
  with a CA, a server certificate for 127.0.0.1 and localhost, and for client ``i`` a device ``loadtest-III``
  (:func:`device_id`) with its own certificate and bearer token, every device in a devices file. The server is
  started with TLS, mTLS (``--tls-client-ca``) and that devices file (``--devices``), so every client proves its
  identity twice: its certificate and its token (which must be its certificate's device's). The folder is removed at
  the end. ``--no-tls``: plaintext on loopback, no tokens.
* ``--server``: ``--tls-ca``/``--tls-cert``/``--tls-key``/``--token-file`` give every client the same identity;
  ``--credentials DIR`` gives client ``i`` the ``i``-th device of ``DIR`` (:func:`credentials_dir`); neither:
  plaintext without a token.
* ``--in-process``: the clients call an inference core directly, without gRPC: there is no channel to secure, so
  neither TLS nor tokens apply.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from slimsplit.edge.cli_common import add_credential_arguments
from slimsplit.edge.config import AuthSettings, ClientConfig, TlsSettings
from slimsplit.errors import ConfigError

#: Client ``i``'s device id under ``--start-server``: this prefix and ``i`` in three digits.
DEVICE_PREFIX = "loadtest-"
#: File names in a ``--credentials`` folder that are not devices (what ``slimsplit-certs`` names the CA and server).
NOT_DEVICES = ("ca", "server")
#: The flags that give an external server's credentials.
CLIENT_FLAGS = ("--tls-ca", "--tls-cert", "--tls-key", "--token-file", "--credentials")


def device_id(index: int) -> str:
    """Client ``index``'s device id under ``--start-server`` (``loadtest-000``, ``loadtest-001``, ...)."""
    return f"{DEVICE_PREFIX}{index:03d}"


@dataclass(frozen=True)
class Identity:
    """One client's credentials: its device id (``None`` when the load tester does not know it), TLS settings and
    token file."""

    device_id: str | None = None
    tls: TlsSettings = field(default_factory=TlsSettings)
    token_file: Path | None = None

    def apply(self, client: ClientConfig) -> ClientConfig:
        """``client`` with these credentials."""
        return replace(client, tls=self.tls, auth=AuthSettings(token_file=self.token_file))


@dataclass(frozen=True)
class ServerCredentials:
    """What a started server is given: its certificate and key, the CA of the client certificates, the devices
    file; and the credentials its health check is asked with (the CA and one device's certificate: the health
    service needs no token)."""

    cert: Path
    key: Path
    client_ca: Path
    devices_file: Path
    probe: TlsSettings

    def flags(self) -> list[str]:
        """The server's command-line flags for these credentials."""
        return [
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
            "--tls-client-ca",
            str(self.client_ca),
            "--devices",
            str(self.devices_file),
        ]


@dataclass
class Security:
    """A run's credentials: one :class:`Identity` per client, what a started server gets (``None``: plaintext or
    not started here), a one-line ``description``; :meth:`close` removes a temporary PKI."""

    description: str
    identities: tuple[Identity, ...]
    server: ServerCredentials | None = None
    folder: Path | None = None  # a temporary PKI, removed by close()

    @property
    def label(self) -> str:
        """What the JSON's meta records: ``mtls+token``, ``tls+token``, ``mtls``, ``tls``, ``token`` or
        ``plaintext`` (of the first client), ``none`` for in-process."""
        if not self.identities:
            return "none"
        first = self.identities[0]
        tls = "mtls" if first.tls.cert is not None else "tls" if first.tls.enabled else ""
        parts = [p for p in (tls, "token" if first.token_file is not None else "") if p]
        return "+".join(parts) or "plaintext"

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> Security:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_security_arguments(p: argparse.ArgumentParser) -> None:
    """``--no-tls`` and the credentials for an external ``--server``."""
    sec = p.add_argument_group(
        "security",
        "--start-server: TLS + mTLS + a bearer token per client by default, from a temporary development PKI: client "
        f"i is device {DEVICE_PREFIX}III with its own certificate and token (the report names it). --server: the "
        "flags below (tokens are read from files, never given on the command line). --in-process has no gRPC: "
        "no TLS, no tokens.",
    )
    sec.add_argument(
        "--no-tls", action="store_true", help="--start-server: plaintext on loopback, no certificates, no tokens"
    )
    add_credential_arguments(sec)  # --server: every client the same identity (or one each with --credentials)
    sec.add_argument(
        "--credentials",
        type=Path,
        metavar="DIR",
        help="--server: one identity per client from DIR: DIR/ca.crt (the server's CA) and, per device ID, "
        "ID.crt + ID.key and/or ID.token in DIR/devices/ if that folder exists, else in DIR (what "
        "'slimsplit-certs device --out DIR --devices FILE' writes; ca.* and server.* are not devices); client "
        "i is the i-th device by name; DIR needs at least --clients devices",
    )


def _given(args: argparse.Namespace) -> list[str]:
    values = (args.tls_ca, args.tls_cert, args.tls_key, args.token_file, args.credentials)
    return [flag for flag, value in zip(CLIENT_FLAGS, values, strict=True) if value is not None]


def check_security_args(args: argparse.Namespace) -> None:
    """The security flags against the server flags (no file is read)."""
    given = _given(args)
    if given and (args.start_server or args.in_process):
        which = "--start-server makes its own credentials" if args.start_server else "--in-process has no gRPC"
        raise ConfigError(f"{which}; {', '.join(given)}: for --server only")
    if args.no_tls and given:
        raise ConfigError(f"--no-tls and {', '.join(given)} exclude each other")
    if args.credentials is not None and len(given) > 1:
        others = [g for g in given if g != "--credentials"]
        raise ConfigError(f"--credentials and {', '.join(others)} exclude each other")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")


def credentials_dir(folder: Path, clients: int) -> tuple[Identity, ...]:
    """``--credentials DIR``: client ``i`` is the ``i``-th device of ``folder`` by name (see the flag's help)."""
    if not folder.is_dir():
        raise ConfigError(f"--credentials: {folder} is not a folder")
    ca = folder / "ca.crt"
    where = folder / "devices" if (folder / "devices").is_dir() else folder
    names = {p.stem for p in where.glob("*.token")}
    names |= {p.stem for p in where.glob("*.crt") if p.with_suffix(".key").is_file()}
    devices = sorted(names - set(NOT_DEVICES))
    if len(devices) < clients:
        raise ConfigError(f"--credentials: {where} has {len(devices)} devices; --clients {clients} needs {clients}")
    out = []
    for name in devices[:clients]:
        cert, key, token = where / f"{name}.crt", where / f"{name}.key", where / f"{name}.token"
        has_cert = cert.is_file() and key.is_file()
        tls = TlsSettings(
            ca=ca if ca.is_file() else None, cert=cert if has_cert else None, key=key if has_cert else None
        )
        out.append(Identity(name, tls, token if token.is_file() else None))
    return tuple(out)


def for_server(args: argparse.Namespace, clients: int) -> Security:
    """``--server``: the identities the flags give (see the module)."""
    if args.credentials is not None:
        identities = credentials_dir(args.credentials, clients)
        return Security(f"one identity per client from {args.credentials}", identities)
    tls = TlsSettings(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    shared = Identity(None, tls, args.token_file)
    what = "mTLS" if tls.cert is not None else "TLS" if tls.enabled else "plaintext"
    token = ", one token for every client" if args.token_file is not None else ", no token"
    return Security(f"{what}{token}", (shared,) * clients)


def in_process(clients: int) -> Security:
    """``--in-process``: no gRPC, no credentials."""
    return Security("none (in-process: no gRPC, so no TLS and no tokens)", ())


def plaintext(clients: int) -> Security:
    """``--start-server --no-tls``."""
    return Security("plaintext on loopback, no tokens (--no-tls)", (Identity(),) * clients)


def dev_pki(clients: int) -> Security:
    """``--start-server``: a temporary development PKI, one device per client (see the module)."""
    from slimsplit.apps import certs  # writes the devices file through the server's devices module

    folder = Path(tempfile.mkdtemp(prefix="slimsplit-loadtest-pki-"))
    try:
        ids = [device_id(i) for i in range(clients)]
        pki = certs.make_dev_pki(folder, ids, devices=folder / "devices.toml")
        assert pki.devices_file is not None
        identities = tuple(
            Identity(
                i, TlsSettings(ca=pki.ca.cert, cert=pki.devices[i].cert, key=pki.devices[i].key), pki.devices[i].token
            )
            for i in ids
        )
        server = ServerCredentials(pki.server.cert, pki.server.key, pki.ca.cert, pki.devices_file, identities[0].tls)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    span = ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"
    description = f"TLS + mTLS + a bearer token per client (devices {span}; a temporary development PKI)"
    return Security(description, identities, server, folder)


def security_for(args: argparse.Namespace, clients: int) -> Security:
    """The run's :class:`Security` from the flags (checked by :func:`check_security_args`)."""
    if args.in_process:
        return in_process(clients)
    if args.start_server:
        return plaintext(clients) if args.no_tls else dev_pki(clients)
    return for_server(args, clients)


def identity_of(security: Security, index: int) -> Identity:
    """Client ``index``'s identity (none: plaintext)."""
    return security.identities[index] if index < len(security.identities) else Identity()


__all__ = [
    "DEVICE_PREFIX",
    "Identity",
    "Security",
    "ServerCredentials",
    "add_security_arguments",
    "check_security_args",
    "credentials_dir",
    "device_id",
    "identity_of",
    "security_for",
]
