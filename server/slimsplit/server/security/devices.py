"""The devices file: which devices may call the server, with which token, for which models, within which limits.

The one place that reads and writes it (``slimsplit-certs`` manages it; the server reads it at start and on reload).
A TOML document with one table per device, keyed by the device id (the CN / SAN URI ``slimsplit://device/ID`` of
its certificate under mTLS)::

    # slimsplit devices file (managed with slimsplit-certs): device id -> token hash, models, limits
    [devices."camera-01"]
    token_sha256 = "<64 hex>"  # sha256 of the token's UTF-8 bytes; the token itself is never stored
    models = ["fmnist-slim"]   # models this device may use; absent or [] = every model
    revoked = false            # true: the token is refused (the entry stays, for the audit log)
    frames_per_s = 30.0        # optional per-device limits: absent = the server's [auth] default, 0 = none
    bytes_per_s = 200000.0
    max_streams = 2

Device ids are :data:`DEVICE_ID_PATTERN` (letters, digits, ``.``, ``_``, ``-``; at most 128, starting with a letter
or digit). Every problem is a :class:`~slimsplit.errors.ConfigError` naming the file and the key
(``devices."camera-01".models: ...``): a document that is not TOML (with its line), an unknown key, a value of the
wrong type, a bad device id, a hash that is not 64 hex digits, a negative limit, a token hash shared by two devices.
The file is written atomically (a temporary file, then a rename) with permissions 0600.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimsplit.errors import ConfigError

#: What a device id looks like (also the file name of its certificate, key and token).
DEVICE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
#: The first characters of every token this module makes.
TOKEN_PREFIX = "sst_"
#: The longest token :func:`add_device` accepts (what the edge reads from its token file).
MAX_TOKEN_LEN = 4096
#: The first line of a devices file written by :func:`save_devices`.
HEADER = "# slimsplit devices file (managed with slimsplit-certs): device id -> token hash, models, limits"
_HASH = re.compile(r"[0-9a-fA-F]{64}\Z")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_TOKEN = re.compile(r"[\x21-\x7e]+\Z")  # printable ASCII, no spaces
_ENTRY_KEYS = ("token_sha256", "models", "revoked", "frames_per_s", "bytes_per_s", "max_streams")


def new_token() -> str:
    """A new random token: :data:`TOKEN_PREFIX` and 43 characters of base64url (32 random bytes)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The sha256 of ``token``'s UTF-8 bytes, 64 lowercase hex digits (what the devices file stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DeviceLimits:
    """A device's own limits; ``None`` = the server's ``[auth]`` default, 0 = no limit for this device."""

    frames_per_s: float | None = None
    bytes_per_s: float | None = None
    max_streams: int | None = None


@dataclass(frozen=True)
class DeviceEntry:
    """One device of the devices file: its id, the hash of its token, the models it may use (empty = every
    model), whether it is revoked, and its limits."""

    device_id: str
    token_sha256: str
    models: tuple[str, ...] = ()
    revoked: bool = False
    limits: DeviceLimits = DeviceLimits()

    def allows_model(self, model: str) -> bool:
        """Whether this device may use ``model`` (regardless of ``revoked``)."""
        return not self.models or model in self.models


@dataclass(frozen=True)
class DeviceTable:
    """The devices of a devices file by id, with an index by token hash."""

    entries: Mapping[str, DeviceEntry]
    _by_hash: dict[str, DeviceEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_hash = {e.token_sha256: e for e in self.entries.values()}
        if len(by_hash) != len(self.entries):
            raise ConfigError("two devices have the same token hash")
        object.__setattr__(self, "_by_hash", by_hash)

    @classmethod
    def empty(cls) -> DeviceTable:
        """A table without devices."""
        return cls({})

    def get(self, device_id: str) -> DeviceEntry | None:
        """The entry of ``device_id``, or ``None``."""
        return self.entries.get(device_id)

    def lookup_token(self, token: str) -> DeviceEntry | None:
        """The entry whose token is ``token`` (a revoked one too: the caller checks ``revoked``), or ``None`` for
        an empty or unknown token."""
        if not token:
            return None
        digest = hash_token(token)
        entry = self._by_hash.get(digest)
        if entry is None or not hmac.compare_digest(entry.token_sha256, digest):
            return None
        return entry

    def with_entry(self, entry: DeviceEntry) -> DeviceTable:
        """This table with ``entry`` added or replacing the one of its id."""
        return DeviceTable({**self.entries, entry.device_id: entry})

    def without(self, device_id: str) -> DeviceTable:
        """This table without ``device_id``."""
        return DeviceTable({k: v for k, v in self.entries.items() if k != device_id})

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[DeviceEntry]:
        return iter(self.entries.values())


# ---------------------------------------------------------------------------------------------- checking


def _quoted(device_id: str) -> str:
    return json.dumps(device_id)


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key if _BARE_KEY.match(key) else _quoted(key)}"


def _key_error(path: Path, key: str, detail: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {detail}", path=str(path), key=key, detail=detail)


def check_device_id(device_id: str) -> None:
    """:class:`ConfigError` unless ``device_id`` matches :data:`DEVICE_ID_PATTERN`."""
    if not DEVICE_ID_PATTERN.match(device_id):
        raise ConfigError(
            f"device id {_quoted(device_id)}: use letters, digits, '.', '_' and '-' (at most 128, "
            "starting with a letter or digit)",
            key="device_id",
        )


def check_limits(limits: DeviceLimits, prefix: str = "") -> None:
    """:class:`ConfigError` naming the field (after ``prefix``) unless every limit set is a finite number >= 0
    (``max_streams`` an integer)."""
    for name in ("frames_per_s", "bytes_per_s"):
        value = getattr(limits, name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0
        ):
            raise ConfigError(f"{prefix}{name}: must be a finite number >= 0, not {value!r}", key=prefix + name)
    streams = limits.max_streams
    if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 0):
        raise ConfigError(f"{prefix}max_streams: must be an integer >= 0, not {streams!r}", key=prefix + "max_streams")


def _number(path: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _key_error(path, key, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise _key_error(path, key, f"must be a finite number >= 0, not {value!r}")
    return float(value)


def _entry(path: Path, device_id: str, raw: Any) -> DeviceEntry:
    prefix = f"devices.{_quoted(device_id)}"
    if not DEVICE_ID_PATTERN.match(device_id):
        raise _key_error(
            path,
            prefix,
            "not a device id: use letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit)",
        )
    if not isinstance(raw, dict):
        raise _key_error(path, prefix, f"must be a table, not {type(raw).__name__}")
    for key in raw:
        if key not in _ENTRY_KEYS:
            raise _key_error(path, _dotted(prefix, key), f"unknown key (known: {', '.join(_ENTRY_KEYS)})")
    if "token_sha256" not in raw:
        raise _key_error(path, f"{prefix}.token_sha256", "missing (the sha256 of the device's token)")
    digest = raw["token_sha256"]
    if not isinstance(digest, str) or not _HASH.match(digest):
        raise _key_error(path, f"{prefix}.token_sha256", "must be a string of 64 hex digits (a sha256)")
    models = raw.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise _key_error(path, f"{prefix}.models", "must be a list of model names (non-empty strings)")
    revoked = raw.get("revoked", False)
    if not isinstance(revoked, bool):
        raise _key_error(path, f"{prefix}.revoked", f"must be true or false, not {type(revoked).__name__}")
    rates = {k: _number(path, f"{prefix}.{k}", raw[k]) for k in ("frames_per_s", "bytes_per_s") if k in raw}
    streams = raw.get("max_streams")
    if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 0):
        raise _key_error(path, f"{prefix}.max_streams", f"must be an integer >= 0, not {streams!r}")
    limits = DeviceLimits(rates.get("frames_per_s"), rates.get("bytes_per_s"), streams)
    return DeviceEntry(device_id, digest.lower(), tuple(dict.fromkeys(models)), revoked, limits)


def parse_devices(text: str, path: Path) -> DeviceTable:
    """The devices file ``text`` (read from ``path``, which errors name)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", path=str(path)) from exc
    for key in doc:
        if key != "devices":
            raise _key_error(path, _dotted("", key)[1:], 'unknown key (a devices file has only [devices."ID"] tables)')
    devices = doc.get("devices", {})
    if not isinstance(devices, dict):
        raise _key_error(path, "devices", f"must be a table of devices, not {type(devices).__name__}")
    entries: dict[str, DeviceEntry] = {}
    owners: dict[str, str] = {}
    for device_id, raw in devices.items():
        entry = _entry(path, device_id, raw)
        other = owners.setdefault(entry.token_sha256, device_id)
        if other != device_id:
            raise _key_error(
                path, f"devices.{_quoted(device_id)}.token_sha256", f"the same token hash as device {_quoted(other)}"
            )
        entries[device_id] = entry
    return DeviceTable(entries)


def load_devices(path: Path) -> DeviceTable:
    """The devices file at ``path`` (:class:`ConfigError` naming the file and the key for every problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"devices file {path} does not exist", path=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}", path=str(path)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read devices file {path}: {exc.strerror or exc}", path=str(path)) from exc
    return parse_devices(text, path)


# ---------------------------------------------------------------------------------------------- writing


def _toml_str(value: str) -> str:
    """``value`` as a TOML basic string (quotes, backslashes and control characters escaped)."""
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def format_devices(table: DeviceTable) -> str:
    """``table`` as a devices file (the text :func:`save_devices` writes; :func:`parse_devices` reads it back)."""
    blocks = [HEADER]
    for entry in table:
        check_device_id(entry.device_id)
        lines = [f"[devices.{_toml_str(entry.device_id)}]", f"token_sha256 = {_toml_str(entry.token_sha256)}"]
        if entry.models:
            lines.append("models = [" + ", ".join(_toml_str(m) for m in entry.models) + "]")
        lines.append(f"revoked = {'true' if entry.revoked else 'false'}")
        check_limits(entry.limits, f"devices.{_quoted(entry.device_id)}.")
        for name in ("frames_per_s", "bytes_per_s"):
            value = getattr(entry.limits, name)
            if value is not None:
                lines.append(f"{name} = {float(value)!r}")
        if entry.limits.max_streams is not None:
            lines.append(f"max_streams = {int(entry.limits.max_streams)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then a rename), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_devices(path: Path, table: DeviceTable) -> None:
    """Write ``table`` to the devices file ``path`` (atomically, mode 0600)."""
    write_private(path, format_devices(table))


def _load_or_empty(path: Path) -> DeviceTable:
    return load_devices(path) if path.exists() else DeviceTable.empty()


def add_device(
    path: Path,
    device_id: str,
    *,
    models: Sequence[str] | None = (),
    limits: DeviceLimits | None = DeviceLimits(),
    token: str | None = None,
) -> str:
    """Add ``device_id`` to the devices file ``path`` (created if missing) or replace its entry, with a new token
    (``token``, else :func:`new_token`), not revoked; return the token. ``models`` / ``limits`` ``None`` keep the
    entry's (every model / the server's defaults for a new device)."""
    check_device_id(device_id)
    if models is not None and (isinstance(models, str) or not all(isinstance(m, str) and m for m in models)):
        raise ConfigError("models: must be a list of model names (non-empty strings)", key="models")
    if limits is not None:
        check_limits(limits)
    if token is None:
        token = new_token()
    elif len(token) > MAX_TOKEN_LEN or not _TOKEN.match(token):
        raise ConfigError(f"a token must be 1 to {MAX_TOKEN_LEN} printable ASCII characters without spaces")
    table = _load_or_empty(path)
    digest = hash_token(token)
    for other in table:
        if other.device_id != device_id and hmac.compare_digest(other.token_sha256, digest):
            raise ConfigError(f"{path}: device {_quoted(other.device_id)} has the same token", path=str(path))
    old = table.get(device_id)
    entry = DeviceEntry(
        device_id,
        digest,
        tuple(dict.fromkeys(models)) if models is not None else (old.models if old else ()),
        False,
        limits if limits is not None else (old.limits if old else DeviceLimits()),
    )
    save_devices(path, table.with_entry(entry))
    return token


def _existing(path: Path, device_id: str) -> tuple[DeviceTable, DeviceEntry]:
    table = load_devices(path)
    entry = table.get(device_id)
    if entry is None:
        known = ", ".join(_quoted(k) for k in table.entries) or "none"
        raise ConfigError(f"{path}: no device {_quoted(device_id)} (devices: {known})", path=str(path))
    return table, entry


def revoke_device(path: Path, device_id: str) -> None:
    """Mark ``device_id`` revoked in the devices file ``path`` (:class:`ConfigError` for an unknown id)."""
    table, entry = _existing(path, device_id)
    save_devices(path, table.with_entry(dataclasses.replace(entry, revoked=True)))


def remove_device(path: Path, device_id: str) -> None:
    """Remove ``device_id`` from the devices file ``path`` (:class:`ConfigError` for an unknown id)."""
    table, _ = _existing(path, device_id)
    save_devices(path, table.without(device_id))


__all__ = [
    "DEVICE_ID_PATTERN",
    "HEADER",
    "MAX_TOKEN_LEN",
    "TOKEN_PREFIX",
    "DeviceEntry",
    "DeviceLimits",
    "DeviceTable",
    "add_device",
    "check_device_id",
    "check_limits",
    "format_devices",
    "hash_token",
    "load_devices",
    "new_token",
    "parse_devices",
    "remove_device",
    "revoke_device",
    "save_devices",
    "write_private",
]
