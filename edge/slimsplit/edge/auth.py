"""The edge's bearer token: read from ``[auth] token_file`` (``--token-file``) and checked before it is sent.

A token is a secret: it is read from a file (never taken from a command line, where ``ps`` shows it), and no
message here ever contains it. :func:`read_token` refuses a file that cannot be a token (unreadable, empty, more than
one line, not printable ASCII, larger than :data:`MAX_TOKEN_BYTES`) with a :class:`~slimsplit.errors.ConfigError`
naming the key (or the flag, where the caller renames it), and warns once per file on stderr when the group or
others may read it. :func:`check_token_route` refuses to send a token in plaintext to a host other than loopback.
"""

from __future__ import annotations

import ipaddress
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from slimsplit.edge.tls import split_target
from slimsplit.errors import ConfigError

#: The largest token file accepted (a slimsplit token is 47 bytes).
MAX_TOKEN_BYTES = 4096
#: The configuration key of the token file (``--token-file`` on the command line).
TOKEN_KEY = "auth.token_file"

_warned: set[str] = set()  # token files already warned about (once per file and process)


def _error(key: str, detail: str, path: Path) -> ConfigError:
    return ConfigError(f"{key}: {detail}", key=key, detail=detail, path=str(path))


def _stderr(message: str) -> None:
    sys.stderr.write(f"slimsplit: warning: {message}\n")
    sys.stderr.flush()


def permission_warning(path: Path, mode: int) -> str | None:
    """What is wrong with a token file of permission bits ``mode`` (the group or others may read it), or ``None``."""
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return (
            f"the token file {path} is readable by its group or by others (mode {stat.S_IMODE(mode):04o}): "
            f"chmod 600 {path}"
        )
    return None


def read_token(path: Path, key: str = TOKEN_KEY, *, warn: Callable[[str], None] | None = None) -> str:
    """The token in the file at ``path``: its one line, surrounding white space removed.

    :class:`ConfigError` naming ``key`` when the file cannot be read, is larger than :data:`MAX_TOKEN_BYTES`, is
    empty, holds more than one line or a character that is not printable ASCII (a space included); the message
    never quotes the file's contents. ``warn`` (default: a line on stderr) is told, once per file and process,
    when the group or others may read the file."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a folder, or a FIFO that would block the open
            raise _error(key, f"{path} is not a regular file", path)
        with path.open("rb") as fh:
            data = fh.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise _error(key, f"cannot read {path}: {exc.strerror or exc}", path) from exc
    if len(data) > MAX_TOKEN_BYTES:
        raise _error(key, f"{path} is larger than {MAX_TOKEN_BYTES} bytes: not a token file", path)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise _error(key, f"{path} holds characters that are not ASCII: not a token file", path) from None
    if not text:
        raise _error(key, f"{path} is empty: it must hold the device's token (slimsplit-certs token ...)", path)
    if "\n" in text or "\r" in text:
        raise _error(key, f"{path} holds more than one line: it must hold the token alone", path)
    if not all(0x21 <= ord(c) <= 0x7E for c in text):
        raise _error(key, f"{path} holds characters that are not printable ASCII (spaces, control characters)", path)
    problem = permission_warning(path, info.st_mode)
    resolved = str(path.resolve())
    if problem is not None and resolved not in _warned:
        _warned.add(resolved)
        (warn or _stderr)(problem)
    return text


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine's loopback:
    ``localhost``, 127.0.0.0/8 or ::1."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_token_route(*targets: str) -> None:
    """Refuse (:class:`ConfigError` naming ``auth.token_file``) to send a token in plaintext when one of
    ``targets`` (the server's address, and the address dialled, e.g. a local proxy in front of it) is not on
    loopback: the token would travel in clear."""
    for target in targets:
        try:
            host, _ = split_target(target)
        except ValueError:
            host = target
        if not is_loopback(host):
            detail = (
                f"a token over plaintext to {target} would travel in clear: use TLS (--tls-ca, [tls] ca), or leave "
                "the token out"
            )
            raise ConfigError(f"{TOKEN_KEY}: {detail}", key=TOKEN_KEY, detail=detail, target=target)


__all__ = ["MAX_TOKEN_BYTES", "TOKEN_KEY", "check_token_route", "is_loopback", "permission_warning", "read_token"]
