"""``slimsplit-certs``: development certificates for TLS and mTLS (the ``cryptography`` package; no own crypto).

* ``ca``: a certificate authority: ``ca.key`` and a self-signed ``ca.crt``;
* ``server``: a server certificate for the given DNS names and IP addresses, signed by the CA;
* ``device``: a device (client) certificate, the device id as its CN and as a SAN URI ``slimsplit://device/ID``
  (and a SAN DNS name when the id is one), signed by the CA.

Keys are EC P-256 in PEM, written with permissions 0600; no file is overwritten unless ``--force`` is given. A
problem (a missing CA, a file that exists) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from slimsplit.errors import ConfigError

PROG = "slimsplit-certs"
EXIT_USAGE = 2
DEFAULT_CA_DAYS = 3650
DEFAULT_DAYS = 365
#: The SAN URI of a device certificate: this prefix and the device id.
DEVICE_URI_PREFIX = "slimsplit://device/"
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9-]{1,63})*\Z")
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


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
    return _save(out, name, key, cert, force)


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
    return _leaf(ca_dir, out, file_name, names[0], sans, ExtendedKeyUsageOID.SERVER_AUTH, days, force)


def create_device_cert(
    ca_dir: Path, out: Path, device_id: str, *, days: int = DEFAULT_DAYS, force: bool = False
) -> Issued:
    """A device certificate for ``device_id`` (CN and SAN URI, plus SAN DNS when the id is a DNS name) signed by
    the CA in ``ca_dir``, written to ``out`` as ``DEVICE_ID.key`` and ``DEVICE_ID.crt``."""
    if not _DEVICE_ID.match(device_id):
        raise ConfigError(f"device id {device_id!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)]
    if _DNS_NAME.match(device_id):
        sans.append(x509.DNSName(device_id))
    return _leaf(ca_dir, out, device_id, device_id, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days, force)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Create development certificates for slimsplit's TLS and mTLS (keys are written 0600).",
        epilog=f"examples: {PROG} ca --out certs;   {PROG} server --ca certs --out certs localhost 127.0.0.1;   "
        f"{PROG} device --ca certs --out certs camera-01",
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
    dev.add_argument("device_id", metavar="DEVICE_ID", help="the device's identity")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ca":
            issued = create_ca(args.out, name=args.name, days=args.days, force=args.force)
        elif args.command == "server":
            issued = create_server_cert(
                args.ca, args.out, args.names, file_name=args.name, days=args.days, force=args.force
            )
        else:
            issued = create_device_cert(args.ca, args.out, args.device_id, days=args.days, force=args.force)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{PROG}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {issued.key} (0600) and {issued.cert}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
