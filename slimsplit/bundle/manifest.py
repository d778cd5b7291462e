"""The model bundle manifest: the one artifact that ties edge and server together.

A bundle is a folder::

    <bundle>/
      manifest.json          this schema (``SCHEMA_VERSION``)
      encoder.onnx           head + slimmable bottleneck encoder; inputs ``image`` [N,3,H,W] and ``width`` [1] int64
      tails/w<W>.onnx        decoder + tail for one width (shared by every bit depth of that width)
      model.pt               torch checkpoint of the whole split model (server's PyTorch backend, fine-tuning)
      baseline/backbone.onnx the unsplit backbone (teacher), for baselines (optional)
      codec_tables.npz       learned huffman code lengths per mode for the feature codec (optional; numpy .npz,
                             see ``slimsplit.bundle.codec_tables``)

The manifest is read within :mod:`slimsplit.bundle.limits` (size and nesting bounded before it is parsed), parsed
into frozen dataclasses and validated field by field, every name and figure against a bound; anything wrong is a
:class:`~slimsplit.errors.BundleError` that names the file and the field. This module needs only the standard
library.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimsplit.bundle import limits
from slimsplit.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class InputSpec:
    """What the encoder expects and how raw uint8 RGB images are turned into it."""

    channels: int = 3
    height: int = 64
    width: int = 64
    color: str = "RGB"
    layout: str = "NCHW"
    # x = (pixel / 255 - mean[c]) / std[c]
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class SplitSpec:
    """Where the backbone was cut: block names on each side, as data."""

    backbone: str
    head: tuple[str, ...]
    tail: tuple[str, ...]


@dataclass(frozen=True)
class FeatureSpec:
    """The bottleneck tensor that crosses the network (per frame, batch dimension excluded)."""

    max_channels: int
    height: int
    width: int

    def shape(self, width: int) -> tuple[int, int, int]:
        return (width, self.height, self.width)


@dataclass(frozen=True)
class EncoderSpec:
    file: str = "encoder.onnx"
    image_input: str = "image"
    width_input: str = "width"
    output: str = "features"


@dataclass(frozen=True)
class ModeSpec:
    """One operating mode: a bottleneck width and a quantization bit depth, with measured figures."""

    name: str
    width: int
    bits: int
    tail: str  # path of the tail ONNX file, relative to the bundle
    accuracy: float | None = None  # top-1 on the full test set, a fraction
    payload_bytes_mean: float | None = None  # real encoded bytes at batch size 1, header included
    encoder_ms_p50: float | None = None  # ORT, 1 thread, on the machine that exported the bundle
    tail_ms_p50: float | None = None  # ORT tail on the exporting machine, 1 thread

    @staticmethod
    def make_name(width: int, bits: int) -> str:
        return f"w{width}b{bits}"


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    classes: tuple[str, ...]
    input: InputSpec
    split: SplitSpec
    feature: FeatureSpec
    encoder: EncoderSpec
    modes: tuple[ModeSpec, ...]
    torch_checkpoint: str | None = "model.pt"
    # the unsplit backbone (teacher) as ONNX, input ``image`` -> ``logits``: the baseline benchmarks compare with
    baseline_model: str | None = None
    codec: str = "slimsplit-feature"
    # the feature codec's learned huffman tables (.npz, one [width, 256] uint8 array of code lengths per mode)
    codec_tables: str | None = None
    # a hash of those tables' contents (``slimsplit.bundle.codec_tables.tables_fingerprint``): the edge checks that
    # the server decodes with the same code, and loading checks that the file is the one the manifest was made with
    codec_tables_fingerprint: str | None = None
    schema_version: int = SCHEMA_VERSION
    notes: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ lookups
    def mode(self, name: str) -> ModeSpec:
        for m in self.modes:
            if m.name == name:
                return m
        from slimsplit.errors import UnknownMode

        raise UnknownMode(
            f"model {self.name!r} has no mode {name!r}; known modes: {', '.join(m.name for m in self.modes)}",
            model=self.name,
            mode=name,
        )

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted({m.width for m in self.modes}))

    @property
    def bit_depths(self) -> tuple[int, ...]:
        return tuple(sorted({m.bits for m in self.modes}))

    @property
    def mode_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modes)

    # ------------------------------------------------------------------ (de)serialisation
    def to_json(self) -> str:
        d = asdict(self)
        d["notes"] = dict(self.notes)
        return json.dumps(d, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "<manifest>") -> Manifest:
        return _parse_manifest(raw, source)


# ---------------------------------------------------------------------------------------------- parsing


def _req(raw: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise BundleError(f"{where}: expected an object, got {type(raw).__name__}", field=where)
    if key not in raw:
        raise BundleError(f"{where}: missing required field {key!r}", field=f"{where}.{key}")
    return raw[key]


def _int(v: Any, where: str, lo: int = 0, hi: int = 1 << 30) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BundleError(f"{where}: expected an integer in [{lo}, {hi}], got {_show(v)}", field=where)
    return v


def _cut(text: str, limit: int = 80) -> str:
    """``text``, cut short: a hostile value must not make a megabyte error message."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _show(v: Any) -> str:
    return _cut(repr(v))


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _str(v: Any, where: str, max_chars: int = limits.MAX_STRING_CHARS) -> str:
    if not isinstance(v, str) or not v:
        raise BundleError(f"{where}: expected a non-empty string, got {_show(v)}", field=where)
    if len(v) > max_chars:
        raise BundleError(f"{where}: {len(v)} characters, more than the {max_chars} allowed", field=where)
    if _CONTROL.search(v):
        raise BundleError(f"{where}: control characters are not allowed: {_show(v)}", field=where)
    return v


def _name(v: Any, where: str, pattern: re.Pattern[str], rule: str) -> str:
    """A name that becomes a folder name, a metric label and a wire field: it must match ``pattern`` whole."""
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)  # "version": 2
    s = _str(v, where)
    if not pattern.fullmatch(s):
        raise BundleError(f"{where}: {_show(s)} is not allowed here ({rule})", field=where)
    return s


def _opt_float(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise BundleError(f"{where}: expected a finite number or null, got {_show(v)}", field=where)
    return float(v)


def _figure(v: Any, where: str, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    """An optional measured figure: null, or finite and in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    x = _opt_float(v, where)
    if x is None:
        return None
    if x > hi or x < lo or (lo_open and x == lo):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise BundleError(f"{where}: {x:g} is outside the sane range {interval}", field=where)
    return x


def _floats(v: Any, where: str, n: int) -> tuple[float, ...]:
    if not isinstance(v, Sequence) or isinstance(v, str) or len(v) != n:
        raise BundleError(f"{where}: expected a list of {n} numbers, got {_show(v)}", field=where)
    out = tuple(_opt_float(x, where) for x in v)
    if any(x is None for x in out):
        raise BundleError(f"{where}: null is not allowed here", field=where)
    return tuple(float(x) for x in out if x is not None)


def _list(v: Any, where: str, max_items: int) -> Sequence[Any]:
    if not isinstance(v, Sequence) or isinstance(v, str):
        raise BundleError(f"{where}: expected a list, got {type(v).__name__}", field=where)
    if len(v) > max_items:
        raise BundleError(f"{where}: {len(v)} entries, more than the {max_items} allowed", field=where)
    return v


def _rel_path(v: Any, where: str) -> str:
    s = _str(v, where, limits.MAX_PATH_CHARS)
    p = Path(s)
    if p.is_absolute() or ".." in p.parts:
        raise BundleError(f"{where}: file paths must be relative to the bundle and stay inside it: {s!r}", field=where)
    return s


def _parse_input(raw: Mapping[str, Any]) -> InputSpec:
    inp = _req(raw, "input", "manifest")
    channels = _int(_req(inp, "channels", "input"), "input.channels", 1, 16)
    spec = InputSpec(
        channels=channels,
        height=_int(_req(inp, "height", "input"), "input.height", 1, 8192),
        width=_int(_req(inp, "width", "input"), "input.width", 1, 8192),
        color=_str(inp.get("color", "RGB"), "input.color", 16),
        layout=_str(inp.get("layout", "NCHW"), "input.layout", 16),
        mean=_floats(_req(inp, "mean", "input"), "input.mean", channels),
        std=_floats(_req(inp, "std", "input"), "input.std", channels),
    )
    if spec.layout != "NCHW":
        raise BundleError(f"input.layout must be 'NCHW', got {spec.layout!r}", field="input.layout")
    if any(s <= 0 for s in spec.std):
        raise BundleError("input.std must be positive", field="input.std")
    if any(not limits.MIN_STD <= s <= limits.MAX_STD for s in spec.std):
        raise BundleError(
            f"input.std {spec.std} is outside the sane range [{limits.MIN_STD:g}, {limits.MAX_STD:g}]",
            field="input.std",
        )
    if any(abs(m) > limits.MAX_ABS_MEAN for m in spec.mean):
        raise BundleError(
            f"input.mean {spec.mean} is outside the sane range [-{limits.MAX_ABS_MEAN:g}, {limits.MAX_ABS_MEAN:g}]",
            field="input.mean",
        )
    if math.prod(spec.shape) > limits.MAX_INPUT_ELEMENTS:
        raise BundleError(
            f"input: {spec.shape} is more than {limits.MAX_INPUT_ELEMENTS} values per image", field="input"
        )
    return spec


def _parse_feature(raw: Mapping[str, Any]) -> FeatureSpec:
    ft = _req(raw, "feature", "manifest")
    spec = FeatureSpec(
        max_channels=_int(_req(ft, "max_channels", "feature"), "feature.max_channels", 1, 4096),
        height=_int(_req(ft, "height", "feature"), "feature.height", 1, 4096),
        width=_int(_req(ft, "width", "feature"), "feature.width", 1, 4096),
    )
    if math.prod(spec.shape(spec.max_channels)) > limits.MAX_FEATURE_ELEMENTS:
        raise BundleError(
            f"feature: {spec.shape(spec.max_channels)} is more than {limits.MAX_FEATURE_ELEMENTS} values per frame",
            field="feature",
        )
    return spec


def _parse_modes(raw: Mapping[str, Any], feature: FeatureSpec) -> tuple[ModeSpec, ...]:
    raw_modes = _list(_req(raw, "modes", "manifest"), "modes", limits.MAX_MODES)
    if not raw_modes:
        raise BundleError("'modes' must be a non-empty list", field="modes")
    modes: list[ModeSpec] = []
    seen: set[str] = set()
    for i, m in enumerate(raw_modes):
        where = f"modes[{i}]"
        width = _int(_req(m, "width", where), f"{where}.width", 1, feature.max_channels)
        bits = _int(_req(m, "bits", where), f"{where}.bits", 1, 16)
        name = _name(m.get("name", ModeSpec.make_name(width, bits)), f"{where}.name", *_NAME)
        if name in seen:
            raise BundleError(f"duplicate mode name {name!r}", field=f"{where}.name")
        seen.add(name)
        acc = _opt_float(m.get("accuracy"), f"{where}.accuracy")
        if acc is not None and not 0.0 <= acc <= 1.0:
            raise BundleError(f"{where}.accuracy must be a fraction in [0, 1], got {acc}", field=f"{where}.accuracy")
        latency = (0.0, limits.MAX_LATENCY_MS)
        modes.append(
            ModeSpec(
                name=name,
                width=width,
                bits=bits,
                tail=_rel_path(_req(m, "tail", where), f"{where}.tail"),
                accuracy=acc,
                payload_bytes_mean=_figure(
                    m.get("payload_bytes_mean"),
                    f"{where}.payload_bytes_mean",
                    0.0,
                    limits.MAX_FRAME_BYTES,
                    lo_open=True,
                ),
                encoder_ms_p50=_figure(m.get("encoder_ms_p50"), f"{where}.encoder_ms_p50", *latency),
                tail_ms_p50=_figure(m.get("tail_ms_p50"), f"{where}.tail_ms_p50", *latency),
            )
        )
    return tuple(modes)


_NAME = (limits.NAME_PATTERN, limits.NAME_RULE)
_VERSION = (limits.VERSION_PATTERN, limits.VERSION_RULE)
_FINGERPRINT = (limits.FINGERPRINT_PATTERN, "8 to 64 lowercase hex digits")


def _parse_manifest(raw: Mapping[str, Any], source: str) -> Manifest:
    """Validate ``raw``; every :class:`BundleError` names ``source`` (the file) first."""
    try:
        manifest = _build_manifest(raw)
    except BundleError as exc:
        if exc.message.startswith(source):
            raise
        raise BundleError(f"{source}: {exc.message}", **{**exc.context, "path": source}) from None
    served = len(manifest.to_json().encode("utf-8"))
    if served > limits.MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{source}: the manifest is {served} bytes as served (whole, in every Describe answer), more than the "
            f"{limits.MAX_MANIFEST_BYTES} allowed",
            path=source,
            limit=limits.MAX_MANIFEST_BYTES,
        )
    return manifest


def _build_manifest(raw: Mapping[str, Any]) -> Manifest:
    if not isinstance(raw, Mapping):
        raise BundleError("the manifest must be a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"unsupported manifest schema_version {_show(version)}; this slimsplit reads version "
            f"{SCHEMA_VERSION} (re-export the bundle with a matching slimsplit)",
            field="schema_version",
        )
    input_spec = _parse_input(raw)
    sp = _req(raw, "split", "manifest")
    blocks = limits.MAX_SPLIT_BLOCKS
    split = SplitSpec(
        backbone=_str(_req(sp, "backbone", "split"), "split.backbone"),
        head=tuple(_str(x, "split.head[]") for x in _list(_req(sp, "head", "split"), "split.head", blocks)),
        tail=tuple(_str(x, "split.tail[]") for x in _list(_req(sp, "tail", "split"), "split.tail", blocks)),
    )
    feature = _parse_feature(raw)
    en = _req(raw, "encoder", "manifest")
    encoder = EncoderSpec(
        file=_rel_path(_req(en, "file", "encoder"), "encoder.file"),
        image_input=_str(en.get("image_input", "image"), "encoder.image_input"),
        width_input=_str(en.get("width_input", "width"), "encoder.width_input"),
        output=_str(en.get("output", "features"), "encoder.output"),
    )
    modes = _parse_modes(raw, feature)
    classes = _list(_req(raw, "classes", "manifest"), "classes", limits.MAX_CLASSES)
    if len(classes) < 2:
        raise BundleError("'classes' must list at least two class names", field="classes")
    ckpt = raw.get("torch_checkpoint")
    baseline = raw.get("baseline_model")
    tables = raw.get("codec_tables")
    fingerprint = raw.get("codec_tables_fingerprint")
    notes = raw.get("notes", {})
    if not isinstance(notes, Mapping):
        raise BundleError("'notes' must be an object", field="notes")
    return Manifest(
        name=_name(_req(raw, "name", "manifest"), "name", *_NAME),
        version=_name(_req(raw, "version", "manifest"), "version", *_VERSION),
        classes=tuple(_str(c, "classes[]") for c in classes),
        input=input_spec,
        split=split,
        feature=feature,
        encoder=encoder,
        modes=modes,
        torch_checkpoint=None if ckpt is None else _rel_path(ckpt, "torch_checkpoint"),
        baseline_model=None if baseline is None else _rel_path(baseline, "baseline_model"),
        codec=_str(raw.get("codec", "slimsplit-feature"), "codec", 64),
        codec_tables=None if tables is None else _rel_path(tables, "codec_tables"),
        codec_tables_fingerprint=None
        if fingerprint is None
        else _name(fingerprint, "codec_tables_fingerprint", *_FINGERPRINT),
        schema_version=SCHEMA_VERSION,
        notes=dict(notes),
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_show(key)}")
        out[key] = value
    return out


def read_manifest(path: Path) -> Manifest:
    """Read and validate ``manifest.json`` (``path`` may be the file or the bundle folder).

    Reads at most :data:`~slimsplit.bundle.limits.MAX_MANIFEST_BYTES` and checks the nesting before parsing, so a
    hostile file costs bounded memory and time and ends in a :class:`BundleError` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"no bundle manifest at {path} (a bundle folder holds {MANIFEST_NAME})", path=str(path))
    cap = limits.MAX_MANIFEST_BYTES
    try:
        with path.open("rb") as f:
            data = f.read(cap + 1)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the manifest: {exc}", path=str(path)) from None
    if len(data) > cap:
        raise BundleError(
            f"{path}: the manifest is over {cap} bytes (a manifest travels whole in every Describe answer)",
            path=str(path),
            limit=cap,
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON: not UTF-8 ({exc})", path=str(path)) from None
    if (problem := limits.json_depth_problem(text)) is not None:
        raise BundleError(f"{path}: the manifest is {problem}", path=str(path), limit=limits.MAX_JSON_DEPTH)
    try:
        raw = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except ValueError as exc:  # json.JSONDecodeError, a NaN, a duplicate key, an integer over 4300 digits
        raise BundleError(f"{path}: not valid JSON: {_cut(str(exc), 200)}", path=str(path)) from None
    return _parse_manifest(raw, str(path))
