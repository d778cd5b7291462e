"""``slimsplit-certs``: development certificates for TLS and mTLS (the ``cryptography`` package; no own crypto),
and the devices file of per-device tokens (:mod:`slimsplit.server.security.devices`).

* ``ca``: a certificate authority: ``ca.key`` and a self-signed ``ca.crt``;
* ``server``: a server certificate for the given DNS names and IP addresses, signed by the CA;
* ``device``: a device (client) certificate, the device id as its CN and as a SAN URI ``slimsplit://device/ID``
  (and a SAN DNS name when the id is one), signed by the CA; with ``--devices FILE`` also a token in
  ``ID.token`` and the device's entry (token hash, ``--models``, limits) in the devices file;
* ``token``: a new token for a device (rotation: the old one stops working when the server reloads the file);
* ``revoke``: mark a device revoked in the devices file; ``devices``: list the devices file.

Keys are EC P-256 in PEM and tokens are ``sst_`` and 43 base64url characters, written with permissions 0600 and
never printed (the devices file holds only their sha256); no file is overwritten unless ``--force`` is given
(``token`` replaces the device's token file: that is what it is for). A problem (a missing CA, a file that
exists, a bad devices file) is one line on stderr and exit status 2.

For tests, the demo and benches, :func:`make_dev_pki` makes a CA, a server certificate and any number of
devices (certificates, keys, tokens and a devices file) in one call.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slimsplit.errors import ConfigError
from slimsplit.server.security.devices import (
    DeviceEntry,
    DeviceLimits,
    DeviceTable,
    add_device,
    check_device_id,
    hash_token,
    load_devices,
    new_token,
    revoke_device,
    save_devices,
    write_private,
)
from slimsplit.server.security.identity import DEVICE_URI_PREFIX

PROG = "slimsplit-certs"
EXIT_USAGE = 2
DEFAULT_CA_DAYS = 3650
DEFAULT_DAYS = 365
_SERVER_DEFAULTS = DeviceLimits()
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9-]{1,63})*\Z")


@dataclass(frozen=True)
class Issued:
    """The files written: the key and the certificate."""

    key: Path
    cert: Path


def _check_writable(paths: Sequence[Path], force: bool) -> None:
    for path in paths:
        if path.exists() and not force:
            raise ConfigError(f"{path} exists; give --force to overwrite it", path=str(path))


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _save(out: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, force: bool) -> Issued:
    issued = Issued(out / f"{name}.key", out / f"{name}.crt")
    _check_writable((issued.key, issued.cert), force)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(issued.key, key_pem, 0o600)
    _write(issued.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return issued


def _validity(days: int, now: datetime.datetime | None) -> tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after): from an hour ago (clock skew) to ``days`` days from now (negative: expired)."""
    now = now or datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(hours=1)
    end = now + datetime.timedelta(days=days)
    if end <= start:
        start = end - datetime.timedelta(days=1)
    return start, end


def load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA's key and certificate in ``ca_dir`` (``ca.key``, ``ca.crt``); :class:`ConfigError` naming what is
    missing or unreadable."""
    key_path, cert_path = ca_dir / "ca.key", ca_dir / "ca.crt"
    for path in (key_path, cert_path):
        if not path.is_file():
            raise ConfigError(f"no CA at {ca_dir}: {path} does not exist (create one with '{PROG} ca')", path=str(path))
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"cannot read the CA in {ca_dir}: {exc}", path=str(ca_dir)) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: not an EC private key", path=str(key_path))
    return key, cert


def create_ca(
    out: Path, *, name: str = "slimsplit development CA", days: int = DEFAULT_CA_DAYS, force: bool = False
) -> Issued:
    """A CA key and self-signed certificate in ``out`` (``ca.key``, ``ca.crt``)."""
    _check_writable((out / "ca.key", out / "ca.crt"), force)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(days, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _save(out, "ca", key, cert, force)


def _sign_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_dir: Path,
    out: Path,
    name: str,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    days: int,
    force: bool,
) -> Issued:
    ca_key, ca_cert = load_ca(ca_dir)
    _check_writable((out / f"{name}.key", out / f"{name}.crt"), force)
    key, cert = _sign_leaf(ca_key, ca_cert, common_name, sans, usage, days)
    return _save(out, name, key, cert, force)


def _server_sans(names: Sequence[str]) -> list[x509.GeneralName]:
    if not names:
        raise ConfigError("give at least one DNS name or IP address for the server certificate")
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not _DNS_NAME.match(name):
                raise ConfigError(f"{name!r} is neither an IP address nor a DNS name") from None
            sans.append(x509.DNSName(name))
    return sans


def _device_sans(device_id: str) -> list[x509.GeneralName]:
    check_device_id(device_id)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)]
    if _DNS_NAME.match(device_id):
        sans.append(x509.DNSName(device_id))
    return sans


def create_server_cert(
    ca_dir: Path,
    out: Path,
    names: Sequence[str],
    *,
    file_name: str = "server",
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> Issued:
    """A server certificate for ``names`` (DNS names and IP addresses) signed by the CA in ``ca_dir``, written to
    ``out`` as ``FILE_NAME.key`` and ``FILE_NAME.crt``. ``days`` < 0 makes an expired one (for tests)."""
    sans = _server_sans(names)
    return _leaf(ca_dir, out, file_name, names[0], sans, ExtendedKeyUsageOID.SERVER_AUTH, days, force)


def create_device_cert(
    ca_dir: Path, out: Path, device_id: str, *, days: int = DEFAULT_DAYS, force: bool = False
) -> Issued:
    """A device certificate for ``device_id`` (CN and SAN URI, plus SAN DNS when the id is a DNS name) signed by
    the CA in ``ca_dir``, written to ``out`` as ``DEVICE_ID.key`` and ``DEVICE_ID.crt``."""
    sans = _device_sans(device_id)
    return _leaf(ca_dir, out, device_id, device_id, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days, force)


# ---------------------------------------------------------------------------------------------- tokens


def token_path(out: Path, device_id: str) -> Path:
    """Where the token of ``device_id`` is written in ``out``: ``DEVICE_ID.token``."""
    return out / f"{device_id}.token"


def _check_token_target(devices: Path, out: Path, device_id: str, force: bool) -> Path:
    """The token file of ``device_id`` in ``out``, after checking that it and the devices entry may be written."""
    check_device_id(device_id)
    path = token_path(out, device_id)
    _check_writable((path,), force)
    table = load_devices(devices) if devices.exists() else DeviceTable.empty()
    if not force and table.get(device_id) is not None:
        raise ConfigError(
            f"device {device_id!r} is already in {devices}; give --force to replace it, or use '{PROG} token' "
            "to give it a new token",
            path=str(devices),
        )
    return path


def issue_token(
    devices: Path,
    out: Path,
    device_id: str,
    *,
    models: Sequence[str] | None = (),
    limits: DeviceLimits | None = _SERVER_DEFAULTS,
    force: bool = False,
) -> Path:
    """A new token for ``device_id``: its entry in the devices file ``devices`` (created if missing; the hash
    only) with ``models`` and ``limits`` (``None``: keep the entry's), and the token in ``out/DEVICE_ID.token``
    (0600, the token and a newline); returns that file. Without ``force``, a token file that exists or a device
    already in the devices file is a :class:`ConfigError`."""
    path = _check_token_target(devices, out, device_id, force)
    token = new_token()
    out.mkdir(parents=True, exist_ok=True)
    # the token file first (as a temporary file): a folder we cannot write fails before the devices file changes
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(token + "\n")
        os.chmod(tmp, 0o600)
        add_device(devices, device_id, models=models, limits=limits, token=token)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------- dev PKI


@dataclass(frozen=True)
class DeviceCreds:
    """What one device of a :class:`DevPki` needs: its certificate and key, and its token file (``None`` without
    a devices file)."""

    cert: Path
    key: Path
    token: Path | None


@dataclass(frozen=True)
class DevPki:
    """A development PKI made by :func:`make_dev_pki`: the CA, the server certificate, each device's credentials,
    and the devices file (``None`` when none was asked for)."""

    ca: Issued
    server: Issued
    devices: Mapping[str, DeviceCreds]
    devices_file: Path | None


def make_dev_pki(
    out: Path,
    device_ids: Sequence[str],
    *,
    server_names: Sequence[str] = ("localhost", "127.0.0.1"),
    devices: Path | None = None,
    days: int = DEFAULT_DAYS,
) -> DevPki:
    """A new CA (``out/ca.key``, ``out/ca.crt``), a server certificate for ``server_names`` (``out/server.*``) and
    for each of ``device_ids`` a device certificate and key in ``out/devices/`` (``ID.crt``, ``ID.key``); with
    ``devices`` also a token per device (``out/devices/ID.token``) and the devices file ``devices`` holding
    exactly these devices. Files there are overwritten (this is for a scratch folder: tests, the demo, benches)."""
    ids = list(dict.fromkeys(device_ids))
    for device_id in ids:
        check_device_id(device_id)
    server_sans = _server_sans(server_names)
    ca = create_ca(out, force=True)
    ca_key, ca_cert = load_ca(out)
    key, cert = _sign_leaf(ca_key, ca_cert, server_names[0], server_sans, ExtendedKeyUsageOID.SERVER_AUTH, days)
    server = _save(out, "server", key, cert, True)
    dev_dir = out / "devices"
    creds: dict[str, DeviceCreds] = {}
    entries: dict[str, DeviceEntry] = {}
    for device_id in ids:
        key, cert = _sign_leaf(
            ca_key, ca_cert, device_id, _device_sans(device_id), ExtendedKeyUsageOID.CLIENT_AUTH, days
        )
        issued = _save(dev_dir, device_id, key, cert, True)
        token_file = None
        if devices is not None:
            token = new_token()
            token_file = token_path(dev_dir, device_id)
            write_private(token_file, token + "\n")
            entries[device_id] = DeviceEntry(device_id, hash_token(token))
        creds[device_id] = DeviceCreds(issued.cert, issued.key, token_file)
    if devices is not None:
        save_devices(devices, DeviceTable(entries))
    return DevPki(ca, server, creds, devices)


# ---------------------------------------------------------------------------------------------- CLI


def _limits_text(limits: DeviceLimits) -> str:
    parts = [
        f"{name}={value:g}"
        for name, value in (
            ("frames_per_s", limits.frames_per_s),
            ("bytes_per_s", limits.bytes_per_s),
            ("max_streams", limits.max_streams),
        )
        if value is not None
    ]
    return " ".join(parts) or "(server defaults)"


def format_device_list(table: DeviceTable) -> str:
    """The devices of ``table``, one a line: id, the first 8 hex digits of the token hash, models, revoked,
    limits."""
    rows = [("DEVICE", "TOKEN", "MODELS", "STATE", "LIMITS")]
    for entry in sorted(table, key=lambda e: e.device_id):
        rows.append(
            (
                entry.device_id,
                entry.token_sha256[:8] + "...",
                ",".join(entry.models) or "(all)",
                "revoked" if entry.revoked else "active",
                _limits_text(entry.limits),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


def _cli_limits(args: argparse.Namespace, devices: Path) -> DeviceLimits | None:
    """The limits of the flags given, over the entry's (``None`` when no flag is given: keep the entry's)."""
    given = {
        k: getattr(args, k) for k in ("frames_per_s", "bytes_per_s", "max_streams") if getattr(args, k) is not None
    }
    if not given:
        return None
    entry = load_devices(devices).get(args.device_id) if devices.exists() else None
    return dataclasses.replace(entry.limits if entry else DeviceLimits(), **given)


def _cli_models(args: argparse.Namespace) -> Sequence[str] | None:
    if getattr(args, "all_models", False):
        return ()
    return tuple(args.models) if args.models is not None else None


def _non_negative(kind: type[float] | type[int]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, not {text!r}")
        return value

    return parse


def _model_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"not a list of model names: {text!r}")
    return names


def _add_entry_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--models",
        action="extend",
        type=_model_names,
        metavar="M[,M...]",
        help="models the device may use (repeatable; default: every model, or as before for a known device)",
    )
    sp.add_argument("--frames-per-s", type=_non_negative(float), metavar="X", help="the device's frame rate limit")
    sp.add_argument("--bytes-per-s", type=_non_negative(float), metavar="X", help="the device's byte rate limit")
    sp.add_argument(
        "--max-streams", type=_non_negative(int), metavar="N", help="the most concurrent streams of the device"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Create development certificates for slimsplit's TLS and mTLS (keys are written 0600).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""examples:
  {PROG} ca --out certs
  {PROG} server --ca certs --out certs localhost 127.0.0.1
  {PROG} device --ca certs --out certs --devices certs/devices.toml --models fmnist-slim camera-01
  {PROG} token --devices certs/devices.toml --out certs camera-01     (a new token: rotation)
  {PROG} revoke --devices certs/devices.toml camera-01
  {PROG} devices --devices certs/devices.toml

Limits: absent = the server's [auth] default, 0 = no limit for this device. Tokens are written to DEVICE_ID.token
(0600) and never printed; the devices file holds only their sha256. The server reads the devices file again
when it changes (or on SIGHUP).""",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, days: int) -> None:
        sp.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="folder to write to (default: .)")
        sp.add_argument("--days", type=int, default=days, help="validity in days (default: %(default)s)")
        sp.add_argument("--force", action="store_true", help="overwrite files that exist")

    ca = sub.add_parser("ca", help="a development CA: ca.key and a self-signed ca.crt")
    common(ca, DEFAULT_CA_DAYS)
    ca.add_argument("--name", default="slimsplit development CA", help="the CA's common name")
    srv = sub.add_parser("server", help="a server certificate for DNS names and IP addresses")
    common(srv, DEFAULT_DAYS)
    srv.add_argument("--ca", type=Path, required=True, metavar="DIR", help="folder with ca.key and ca.crt")
    srv.add_argument("--name", default="server", help="file name of the key and certificate (default: server)")
    srv.add_argument("names", nargs="+", metavar="NAME", help="DNS names and IP addresses the server is reached by")
    dev = sub.add_parser("device", help="a device certificate (CN and SAN = the device id)")
    common(dev, DEFAULT_DAYS)
    dev.add_argument("--ca", type=Path, required=True, metavar="DIR", help="folder with ca.key and ca.crt")
    dev.add_argument(
        "--devices",
        type=Path,
        metavar="FILE",
        help="also a token (DIR/DEVICE_ID.token) and the entry in this devices file",
    )
    _add_entry_flags(dev)
    dev.add_argument("device_id", metavar="DEVICE_ID", help="the device's identity")
    tok = sub.add_parser("token", help="a new token for a device (rotation; adds the device when it is new)")
    tok.add_argument("--devices", type=Path, required=True, metavar="FILE", help="the devices file")
    tok.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR", help="folder of DEVICE_ID.token (default: .)"
    )
    _add_entry_flags(tok)
    tok.add_argument("--all-models", action="store_true", help="let the device use every model")
    tok.add_argument("device_id", metavar="DEVICE_ID", help="the device's identity")
    rev = sub.add_parser("revoke", help="revoke a device's token (its entry stays, marked revoked)")
    rev.add_argument("--devices", type=Path, required=True, metavar="FILE", help="the devices file")
    rev.add_argument("device_id", metavar="DEVICE_ID", help="the device's identity")
    lst = sub.add_parser("devices", help="list the devices of a devices file")
    lst.add_argument("--devices", type=Path, required=True, metavar="FILE", help="the devices file")
    return p


def _run(args: argparse.Namespace) -> str:
    """Carry out the command; what to print."""
    if args.command == "ca":
        issued = create_ca(args.out, name=args.name, days=args.days, force=args.force)
    elif args.command == "server":
        issued = create_server_cert(
            args.ca, args.out, args.names, file_name=args.name, days=args.days, force=args.force
        )
    elif args.command == "device":
        if args.devices is not None:
            _check_token_target(args.devices, args.out, args.device_id, args.force)
            limits = _cli_limits(args, args.devices)
        issued = create_device_cert(args.ca, args.out, args.device_id, days=args.days, force=args.force)
        done = f"wrote {issued.key} (0600) and {issued.cert}"
        if args.devices is None:
            return done
        path = issue_token(
            args.devices, args.out, args.device_id, models=_cli_models(args), limits=limits, force=args.force
        )
        return f"{done}\nwrote the token to {path} (0600) and the device to {args.devices}"
    elif args.command == "token":
        limits = _cli_limits(args, args.devices)
        known = args.devices.exists() and load_devices(args.devices).get(args.device_id) is not None
        path = issue_token(args.devices, args.out, args.device_id, models=_cli_models(args), limits=limits, force=True)
        what = "a new token for" if known else "a token for the new device"
        return f"wrote {what} {args.device_id} to {path} (0600); {args.devices} holds its hash"
    elif args.command == "revoke":
        revoke_device(args.devices, args.device_id)
        return f"revoked {args.device_id} in {args.devices}"
    else:
        return format_device_list(load_devices(args.devices))
    return f"wrote {issued.key} (0600) and {issued.cert}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        message = _run(args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{PROG}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(message)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
