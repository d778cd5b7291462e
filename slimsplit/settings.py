"""Typed settings: frozen dataclasses filled from TOML documents, with errors that name the key.

A configuration is a tree of dataclasses; a TOML document mirrors it (a table per nested dataclass, a key per
field). :func:`from_mapping` builds the tree from a parsed document (or from flags nested the same way) and
checks every key: an unknown key is refused naming it and the keys known there, a value of the wrong type names
its key and what was expected. A dataclass checks its own values in ``__post_init__`` with :func:`check`, naming
the field; :func:`from_mapping` puts the table's path in front (``control.deadline_ms: expected a number > 0,
got 0``). :func:`to_toml` writes a tree back as a document that :func:`from_mapping` accepts.

Supported field types: ``bool``, ``int``, ``float`` (an integer is accepted), ``str``, :class:`~pathlib.Path`,
``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``, mappings (passed through) and nested dataclasses. TOML has no
null: a field whose default is ``None`` is left out of the document to be ``None``; one that may be ``None`` but is
not by default (``X`` not ``str``) is set to ``None`` with the string ``"none"``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from slimsplit.errors import ConfigError

T = TypeVar("T")

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
#: How a document says ``None`` for a field whose default is not ``None``.
NONE = "none"


def field_error(key: str, detail: str) -> ConfigError:
    """``ConfigError("key: detail")`` carrying ``key`` and ``detail`` (so a caller can name the key its own way)."""
    return ConfigError(f"{key}: {detail}", key=key, detail=detail)


def check(cond: bool, key: str, detail: str) -> None:
    """Raise :func:`field_error` ``(key, detail)`` unless ``cond``."""
    if not cond:
        raise field_error(key, detail)


def renamed(exc: ConfigError, name: str) -> ConfigError:
    """``exc`` (from :func:`field_error`) with its key replaced by ``name`` (a table path, a command-line flag)."""
    detail = exc.context.get("detail")
    if not isinstance(detail, str):
        return exc
    return field_error(name, detail)


# ---------------------------------------------------------------------------------------------- reading


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_inner(tp: Any) -> tuple[bool, Any]:
    """(whether ``None`` is allowed, the type without ``None``) for ``X | None``; (False, tp) otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        non_none = [a for a in args if a is not type(None)]
        if type(None) in args and len(non_none) == 1:
            return True, non_none[0]
    return False, tp


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one TOML (or override) value against a dataclass field type."""
    nullable, tp = _optional_inner(tp)
    if nullable and (value is None or (value == NONE and tp is not str)):
        return None
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise field_error(key, f"expected a table, got {type(value).__name__}")
        return from_mapping(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise field_error(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise field_error(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise field_error(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise field_error(key, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise field_error(key, f"expected a path string, got {value!r}")
        return Path(value)
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            if isinstance(value, str | Path):
                value = [value]
            if not isinstance(value, list | tuple):
                raise field_error(key, f"expected a list, got {value!r}")
            return tuple(_convert(v, items[0], f"{key}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise field_error(key, f"expected a list of {len(items)} values, got {value!r}")
        return tuple(_convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items, strict=True)))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise field_error(key, f"expected a table, got {value!r}")
        return dict(value)
    raise field_error(key, f"unsupported configuration type {tp!r}")  # pragma: no cover


def from_mapping(cls: type[T], raw: Mapping[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``cls`` from nested mappings (a parsed TOML document); ``prefix`` = the path of the
    table ``raw`` is (in error messages). Keys left out keep their defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"unknown configuration key {dotted!r} (known here: {known})", key=dotted)
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        named = exc.context.get("key")
        if prefix and isinstance(named, str) and named in names:  # the dataclass named its own field
            raise renamed(exc, f"{prefix}.{named}") from exc
        raise


def read_toml(path: Path | str) -> dict[str, Any]:
    """The TOML document at ``path`` (:class:`ConfigError` naming the file when it is missing or not TOML)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} does not exist", path=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", path=str(path)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}", path=str(path)) from exc


def resolve_paths(cls: type[Any], raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``raw`` (a document for ``cls``) with every relative path of a :class:`~pathlib.Path` field (or a tuple of
    them) made relative to ``base``: paths in a configuration file are relative to the file, not to the working
    directory. Values of the wrong type are left for :func:`from_mapping` to refuse."""
    hints = typing.get_type_hints(cls)
    out = dict(raw)
    for key, value in raw.items():
        if key not in hints:
            continue
        _, tp = _optional_inner(hints[key])
        if _is_dataclass_type(tp) and isinstance(value, Mapping):
            out[key] = resolve_paths(tp, value, base)
        elif tp is Path and isinstance(value, str) and value and not Path(value).is_absolute():
            out[key] = str(base / value)
        elif typing.get_origin(tp) is tuple and typing.get_args(tp) == (Path, Ellipsis):
            items = [value] if isinstance(value, str) else value
            if isinstance(items, list):
                out[key] = [str(base / m) if isinstance(m, str) and not Path(m).is_absolute() else m for m in items]
    return out


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, table by table (a key of ``top`` replaces the same key of ``base``)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load(cls: type[T], path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    """Defaults, then the TOML file at ``path`` (if any; relative paths in it relative to the file), then
    ``overrides`` (nested like the file: command-line flags)."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = resolve_paths(cls, read_toml(path), Path(path).parent)
    if overrides:
        raw = merge(raw, overrides)
    return from_mapping(cls, raw)


# ---------------------------------------------------------------------------------------------- writing


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path | str):
        # JSON's escapes are TOML basic-string escapes; TOML also wants DEL escaped
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _table(obj: Any, name: str) -> list[str]:
    """The blocks of the table ``name`` holding the dataclass ``obj``: its keys (and its mappings as sub-tables)
    first, then one block per nested dataclass."""
    lines = [f"[{name}]"] if name else []
    sub_tables: list[str] = []
    nested: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{name}.{f.name}" if name else f.name
        if value is None:
            default_none = f.default is None or (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            lines.append(f"# {f.name} = (unset)" if default_none else f"{_key(f.name)} = {_value(NONE)}")
        elif dataclasses.is_dataclass(value):
            nested.extend(_table(value, path))
        elif isinstance(value, Mapping):
            sub_tables.append(f"[{path}]")
            sub_tables.extend(f"{_key(str(k))} = {_value(v)}" for k, v in value.items())
        else:
            lines.append(f"{_key(f.name)} = {_value(value)}")
    own = "\n".join(lines + sub_tables)
    return ([own] if own else []) + nested


def to_toml(config: Any) -> str:
    """The dataclass tree ``config`` as a TOML document (what a ``--print-config`` shows): the top-level keys,
    then a table per nested dataclass. A ``None`` is a comment (a key left out) where it is the default, else
    ``"none"``."""
    return "\n\n".join(_table(config, "")) + "\n"


__all__ = [
    "NONE",
    "check",
    "field_error",
    "from_mapping",
    "load",
    "merge",
    "read_toml",
    "renamed",
    "resolve_paths",
    "to_toml",
]
