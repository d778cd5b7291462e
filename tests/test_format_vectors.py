"""The language-neutral test vectors of ``protos/vectors/`` (specified by ``protos/FORMAT.md``): the Python codec
encodes every input to exactly the expected bytes, decodes every frame to exactly the expected values, refuses
every bad frame and input with the expected error, and the committed files are what ``tools/make_vectors.py``
generates. The checks read only the JSON files (tables included), not the generator, and each one is shown to
fail on a vector changed in memory."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import lzma
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from script_loader import load_script

from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.bundle.codec_tables import load_codec_tables, tables_fingerprint
from slimsplit.codec import DecodeLimits, HuffmanTables, decode_features, encode_features, quantize
from slimsplit.codec.bitpack import pack_bits
from slimsplit.codec.header import FeatureHeader, parse_header
from slimsplit.codec.planes import PLANE_HEADER_SIZE, decode_planes, encode_planes
from slimsplit.errors import CodecError, SlimsplitError, UnsupportedVersion

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "protos" / "vectors"
GENERATOR = ROOT / "tools" / "make_vectors.py"
ERRORS: dict[str, type[SlimsplitError]] = {"CodecError": CodecError, "UnsupportedVersion": UnsupportedVersion}
Vector = dict[str, Any]


@functools.cache
def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert doc["file_version"] == 1
    return doc


def vectors(name: str, section: str, keep: Callable[[Vector], bool] = lambda v: True) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in load(name)[section] if keep(v)]


def f32(words: str) -> npt.NDArray[np.float32]:
    """float32 values from space-separated 8-digit hex bit patterns."""
    return np.asarray([int(w, 16) for w in words.split()], dtype=np.uint32).view(np.float32)


def words(a: npt.ArrayLike) -> str:
    flat = np.ascontiguousarray(np.asarray(a, dtype=np.float32)).reshape(-1).view(np.uint32)
    return " ".join(f"{int(v):08x}" for v in flat)


def f16(hex4: str) -> float:
    return float(struct.unpack(">e", bytes.fromhex(hex4))[0])


def f16_hex(value: float) -> str:
    return struct.pack(">e", value).hex()


def limits_of(v: Vector) -> DecodeLimits:
    raw = v["limits"]
    return DecodeLimits(
        max_channels=raw["max_channels"],
        max_height=raw["max_height"],
        max_width=raw["max_width"],
        max_elements=raw["max_elements"],
        max_payload_bytes=raw["max_payload_bytes"],
        allowed_bits=frozenset(raw["allowed_bits"]),
    )


@functools.cache
def all_tables() -> dict[str, HuffmanTables]:
    """The tables vectors name: ``toy`` and the shipped modes, built from code_tables.json's code lengths."""
    doc = load("code_tables.json")
    out = {}
    for t in [doc["toy"], *doc["shipped"]["tables"]]:
        lengths = np.stack([np.frombuffer(bytes.fromhex(row), np.uint8) for row in t["lengths_hex"]])
        out[t["name"]] = HuffmanTables(lengths, t["max_len"])
    return out


def tables_of(v: Vector) -> HuffmanTables | None:
    return None if v["tables"] is None else all_tables()[v["tables"]]


def input_of(v: Vector) -> npt.NDArray[np.float32]:
    shape = tuple(v["input_shape"])
    if "input_fill_f32" in v:
        return np.full(shape, int(v["input_fill_f32"], 16), np.uint32).view(np.float32)
    return f32(v["input_f32"]).reshape(shape)


def inflate_any(coder: str, payload: bytes) -> bytes:
    if coder == "zlib":
        return zlib.decompress(payload, -15)
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 16}]
    return lzma.decompress(payload, format=lzma.FORMAT_RAW, filters=filters)


# ---------------------------------------------------------------------------------------------- the checks


def check_header(v: Vector) -> None:
    shape = (v["shape"][0], v["shape"][1], v["shape"][2])
    header = FeatureHeader(
        v["version"], v["coder"], v["bits"], shape, f16(v["lo_f16"]), f16(v["hi_f16"]), v["payload_len"]
    )
    data = bytes.fromhex(v["header_hex"])
    assert header.to_bytes() == data
    parsed = parse_header(data + bytes(v["payload_len"]), limits_of(v))
    assert parsed == header and parsed.header_len == v["header_len"] == len(data)


def check_encode(v: Vector) -> None:
    x = input_of(v)
    q, lo, hi = quantize(x, v["bits"])
    assert " ".join(str(int(e)) for e in q.reshape(-1)) == v["q"]
    assert (f16_hex(lo), f16_hex(hi)) == (v["lo_f16"], v["hi_f16"])
    assert pack_bits(q, v["bits"]).hex() == v["packed_hex"]
    frame = encode_features(x, v["bits"], entropy=v["coder"], tables=tables_of(v))
    if v["encoder_exact"]:
        assert frame.hex() == v["frame_hex"]
        return
    # DEFLATE / LZMA2: any valid stream of the packed bits is conforming; the rest of the header must agree
    got, want = parse_header(frame), parse_header(bytes.fromhex(v["frame_hex"]), limits_of(v))
    assert dataclasses.replace(got, payload_len=want.payload_len) == want
    assert inflate_any(v["coder"], frame[got.header_len :]).hex() == v["packed_hex"]


def check_decode(v: Vector) -> None:
    decoded = decode_features(bytes.fromhex(v["frame_hex"]), limits_of(v), tables=tables_of(v))
    h = decoded.header
    assert (h.version, h.coder, h.bits, list(h.shape), h.payload_len) == (
        v["version"],
        v["coder"],
        v["bits"],
        v["shape"],
        v["payload_len"],
    )
    assert (f16_hex(h.lo), f16_hex(h.hi)) == (v["lo_f16"], v["hi_f16"])
    assert decoded.array.dtype == np.float32 and list(decoded.array.shape) == v["shape"]
    assert words(decoded.array) == v["decoded_f32"]  # bit patterns: the sign of zero counts too


def check_refusal(v: Vector) -> None:
    error = ERRORS[v["error"]]
    assert error.grpc_status == v["grpc_status"]
    with pytest.raises(SlimsplitError) as info:
        decode_features(bytes.fromhex(v["frame_hex"]), limits_of(v), tables=tables_of(v))
    assert type(info.value) is error, info.value
    assert info.value.context.get("field") == v["field"], info.value


def check_encode_refusal(v: Vector) -> None:
    with pytest.raises(SlimsplitError) as info:
        encode_features(input_of(v), v["bits"], entropy=v["coder"])
    assert type(info.value) is ERRORS[v["error"]], info.value
    assert info.value.context.get("field") == v["field"], info.value


def check_misencoded(v: Vector) -> None:
    """Today's format accepts these wrongly packed frames (FORMAT.md 4.2); if it ever refuses them, say so there."""
    limits, tables = limits_of(v), tables_of(v)
    wrong = decode_features(bytes.fromhex(v["frame_hex"]), limits, tables=tables).array
    right = decode_features(bytes.fromhex(v["intended_frame_hex"]), limits, tables=tables).array
    assert words(wrong) == v["decoded_f32"] and words(right) == v["intended_decoded_f32"]
    assert words(wrong) != words(right)


def check_plane_encode(v: Vector) -> None:
    x = f32(v["input_f32"]).reshape(tuple(v["input_shape"]))
    q, lo, hi = quantize(x, v["bits"])
    assert " ".join(str(int(e)) for e in q.reshape(-1)) == v["q"]
    assert (f16_hex(lo), f16_hex(hi)) == (v["lo_f16"], v["hi_f16"])
    units = encode_planes(x, v["bits"], frame_id=v["frame_id"])
    assert len(units) == len(v["units"]) == v["bits"]
    for unit, want in zip(units, v["units"], strict=True):
        expected = bytes.fromhex(want["unit_hex"])
        if v["encoder_exact"] or want["coder"] == "none":
            assert unit == expected
            continue
        # DEFLATE: any valid stream of the plane's bits is conforming; the header up to payload_len must agree
        assert unit[:18] == expected[:18]
        assert zlib.decompress(unit[PLANE_HEADER_SIZE:], -15).hex() == want["packed_hex"]


def check_plane_decode(v: Vector) -> None:
    units = [bytes.fromhex(u["unit_hex"]) for u in v["units"]]
    for prefix in v["prefixes"]:
        k = prefix["planes"]
        for order in (units[:k], units[:k][::-1]):  # units may arrive in any order
            decoded = decode_planes(order)
            assert decoded.dtype == np.float32
            assert words(decoded) == prefix["decoded_f32"]


def check_plane_refusal(v: Vector) -> None:
    assert v["error"] == "CodecError" and CodecError.grpc_status == v["grpc_status"]
    with pytest.raises(SlimsplitError) as info:
        decode_planes([bytes.fromhex(u) for u in v["units_hex"]], limits_of(v))
    assert type(info.value) is CodecError, info.value
    assert info.value.context.get("field") == v["field"], info.value


# ---------------------------------------------------------------------------------------------- the vectors


@pytest.mark.parametrize("v", vectors("header.json", "headers"))
def test_header_serialises_and_parses_exactly(v: Vector) -> None:
    check_header(v)


@pytest.mark.parametrize("v", vectors("frames.json", "frames", lambda v: v["encode"]))
def test_input_encodes_to_the_expected_frame(v: Vector) -> None:
    check_encode(v)


@pytest.mark.parametrize("v", vectors("frames.json", "frames"))
def test_frame_decodes_to_the_expected_values(v: Vector) -> None:
    check_decode(v)


@pytest.mark.parametrize("v", vectors("refusals.json", "frames"))
def test_bad_frame_is_refused_with_the_expected_error(v: Vector) -> None:
    check_refusal(v)


@pytest.mark.parametrize("v", vectors("refusals.json", "encode"))
def test_bad_input_is_refused_by_the_encoder(v: Vector) -> None:
    check_encode_refusal(v)


@pytest.mark.parametrize("v", vectors("misencoded.json", "frames"))
def test_wrongly_packed_frame_is_accepted_as_documented(v: Vector) -> None:
    check_misencoded(v)


@pytest.mark.parametrize("v", vectors("planes.json", "units", lambda v: v["encode"]))
def test_input_encodes_to_the_expected_plane_units(v: Vector) -> None:
    check_plane_encode(v)


@pytest.mark.parametrize("v", vectors("planes.json", "units"))
def test_every_prefix_of_plane_units_decodes_to_the_expected_values(v: Vector) -> None:
    check_plane_decode(v)


@pytest.mark.parametrize("v", vectors("planes.json", "refusals"))
def test_bad_plane_units_are_refused_with_the_expected_error(v: Vector) -> None:
    check_plane_refusal(v)


def test_plane_vectors_cover_what_format_md_promises() -> None:
    doc = load("planes.json")
    units = doc["units"]
    assert {1, 3, 8, 16} <= {v["bits"] for v in units if v["encode"]}
    coders = {u["coder"] for v in units if v["encode"] for u in v["units"]}
    assert coders == {"none", "zlib"}
    assert any(v["lo_f16"] == v["hi_f16"] for v in units if v["encode"])  # constant tensors
    assert any(not v["encode"] for v in units)  # a stream the encoder does not write
    assert all([p["planes"] for p in v["prefixes"]] == list(range(1, len(v["units"]) + 1)) for v in units)
    fields = {v["field"] for v in doc["refusals"]}
    assert {"plane", "header", "magic", "bits", "coder", "channels", "lo/hi", "payload_len", "payload"} <= fields
    assert "frame_id" in fields


def test_the_plane_checks_fail_on_a_changed_vector() -> None:
    doc = load("planes.json")
    small = copy.deepcopy(next(v for v in doc["units"] if v["name"] == "planes_3_bits_small"))
    changed = copy.deepcopy(small)
    changed["units"][1]["unit_hex"] = _flip(changed["units"][1]["unit_hex"], 20)
    with pytest.raises(AssertionError):
        check_plane_encode(changed)
    value = copy.deepcopy(small)
    first = value["prefixes"][0]["decoded_f32"].split()
    value["prefixes"][0]["decoded_f32"] = " ".join([f"{int(first[0], 16) ^ 1:08x}", *first[1:]])
    with pytest.raises(AssertionError):
        check_plane_decode(value)
    deflated = copy.deepcopy(next(v for v in doc["units"] if v["name"] == "planes_8_bits_bottleneck"))
    zlib_unit = next(u for u in deflated["units"] if u["coder"] == "zlib")
    zlib_unit["packed_hex"] = _flip(zlib_unit["packed_hex"], 0)
    with pytest.raises(AssertionError):
        check_plane_encode(deflated)
    refusal = copy.deepcopy(doc["refusals"][2])
    with pytest.raises(AssertionError):
        check_plane_refusal({**refusal, "field": "payload"})
    with pytest.raises(pytest.fail.Exception):  # valid units in place of the bad ones
        check_plane_refusal({**refusal, "units_hex": [small["units"][0]["unit_hex"]]})


def test_check_mode_accepts_another_deflate_stream_of_a_plane_only(generator: Any, tmp_path: Path) -> None:
    """As for frames: a zlib that compresses a plane differently must not fail --check; other bits must."""
    shutil.copytree(VECTORS, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "planes.json"
    text = path.read_text(encoding="utf-8")

    def swap(packed: bytes) -> None:
        doc = json.loads(text)
        case = next(c for c in doc["units"] if c["name"] == "planes_8_bits_bottleneck")
        row = next(u for u in case["units"] if u["coder"] == "zlib")
        unit = bytes.fromhex(row["unit_hex"])
        payload = b"\x01" + struct.pack("<HH", len(packed), len(packed) ^ 0xFFFF) + packed  # one stored block
        row["unit_hex"] = (unit[:18] + len(payload).to_bytes(2, "big") + payload).hex()
        assert row["unit_hex"] != unit.hex()
        path.write_text(generator.text_of(doc), encoding="utf-8")

    case = next(c for c in json.loads(text)["units"] if c["name"] == "planes_8_bits_bottleneck")
    packed = bytes.fromhex(next(u for u in case["units"] if u["coder"] == "zlib")["packed_hex"])
    swap(packed)
    assert generator.check(tmp_path) == []
    swap(bytes((packed[0] ^ 0x40,)) + packed[1:])
    assert len(generator.check(tmp_path)) == 1


def test_vectors_cover_what_format_md_promises() -> None:
    frames = load("frames.json")["frames"]
    assert {v["bits"] for v in frames} == set(range(1, 17))
    assert {v["coder"] for v in frames if v["encode"]} == {"none", "zlib", "lzma", "huffman"}
    assert {v["version"] for v in frames} == {1, 2}
    assert {v["lo_f16"] for v in frames} >= {"8000", "8001"} and "0001" in {v["hi_f16"] for v in frames}
    assert any(v["lo_f16"] == v["hi_f16"] for v in frames)  # constant tensors
    assert any(len(v["header_hex"]) > 20 for v in frames if v["version"] == 2)  # multi-byte varints in frames
    lengths = {v["header_len"] for v in load("header.json")["headers"]}
    assert {10, 11, 14, 18} <= lengths
    refusals = load("refusals.json")
    assert {v["error"] for v in refusals["frames"]} == set(ERRORS)
    fields = {v["field"] for v in refusals["frames"]}
    assert {
        "header",
        "magic",
        "version",
        "coder",
        "bits",
        "channels",
        "shape",
        "payload_len",
        "payload",
        "lo/hi",
    } <= fields
    assert {v["field"] for v in refusals["encode"]} == {"values", "lo", "hi", "bits", "shape", "payload_len"}
    assert load("misencoded.json")["frames"]


# ------------------------------------------------------------------------------ tables and preprocessing


def test_code_tables_and_fingerprints_match_the_shipped_bundle() -> None:
    doc = load("code_tables.json")
    shipped = doc["shipped"]
    bundle = Bundle.open(default_bundle_path())
    tables = load_codec_tables(bundle)
    assert sorted(tables) == shipped["fingerprint_order"] == [t["name"] for t in shipped["tables"]]
    for t in shipped["tables"]:
        got = tables[t["name"]]
        assert [bytes(row).hex() for row in got.lengths] == t["lengths_hex"] and got.max_len == t["max_len"]
        assert got.fingerprint() == t["fingerprint"]
    assert tables_fingerprint(tables) == shipped["fingerprint"] == bundle.manifest.codec_tables_fingerprint
    assert shipped["manifest_codec_tables_fingerprint"] == bundle.manifest.codec_tables_fingerprint
    fp_input = b"".join(n.encode() + b"\0" + tables[n].fingerprint().encode() for n in sorted(tables))
    assert fp_input.hex() == shipped["fingerprint_input_hex"]
    assert not set(shipped["modes_without_table"]) & set(tables)
    rel = bundle.manifest.codec_tables
    assert rel is not None
    with zipfile.ZipFile(bundle.path(rel)) as z:
        assert [i.filename for i in z.infolist()] == [m["name"] for m in shipped["npz_members"]]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    toy = doc["toy"]
    assert tables_fingerprint({"toy": all_tables()["toy"]}) == toy["bundle_fingerprint"]
    assert all_tables()["toy"].fingerprint() == toy["fingerprint"]


@pytest.mark.parametrize("name", ["toy", "w2b2"])
def test_canonical_codes_are_the_codes_the_codec_writes(name: str) -> None:
    doc = load("code_tables.json")
    codes = doc["toy"]["canonical_codes"] if name == "toy" else doc["shipped_canonical_codes"][name]
    t = all_tables()[name]
    for k, row in enumerate(codes):
        for sym, code in enumerate(row):
            assert len(code) == t.lengths[k, sym]
            out = t.encode(bytes((sym,)), np.asarray([k], np.intp))
            assert "".join(f"{b:08b}" for b in out) == code.ljust(8 * len(out), "0")


def test_preprocessing_matches_the_edge_runtime() -> None:
    pytest.importorskip("onnxruntime")
    from slimsplit.edge.runtime import EncoderRuntime

    doc = load("preprocess.json")
    runtime = EncoderRuntime(Bundle.open(default_bundle_path()))
    spec = doc["input"]
    image = np.zeros((spec["height"], spec["width"], spec["channels"]), np.uint8)
    flat = image.reshape(-1, spec["channels"])
    flat[:256] = np.arange(256, dtype=np.uint8)[:, None]  # pixel value p at row p // width, column p % width
    out = runtime.preprocess(image)
    assert out.shape == (1, spec["channels"], spec["height"], spec["width"]) and out.dtype == np.float32
    for c, row in enumerate(doc["pixel_f32"]):
        assert words(out[0, c].reshape(-1)[:256]) == row
    ex = doc["example"]
    image[:] = 0
    image[: ex["height"], : ex["width"]] = np.frombuffer(bytes.fromhex(ex["image_hwc_hex"]), np.uint8).reshape(
        ex["height"], ex["width"], spec["channels"]
    )
    corner = runtime.preprocess(image)[0, :, : ex["height"], : ex["width"]]
    assert words(corner) == ex["output_chw_f32"]


# ------------------------------------------------------------------------------ freshness; the checks can fail


@pytest.fixture(scope="module")
def generator() -> Any:
    return load_script(GENERATOR, "make_vectors")


def test_committed_vectors_are_fresh() -> None:
    """CI's guard (tools/make_vectors.py --check): the files are what the generator writes today."""
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _frame(name: str) -> Vector:
    return copy.deepcopy(next(v for v in load("frames.json")["frames"] if v["name"] == name))


def _flip(hex_string: str, byte: int) -> str:
    data = bytearray(bytes.fromhex(hex_string))
    data[byte] ^= 0x01
    return data.hex()


def test_the_checks_fail_on_a_changed_vector() -> None:
    raw = _frame("pack_example_3_bits")
    changed = {**raw, "frame_hex": _flip(raw["frame_hex"], len(raw["frame_hex"]) // 2 - 1)}
    with pytest.raises(AssertionError):
        check_encode(changed)
    with pytest.raises(CodecError):  # the flipped bit lands in the padding: the decoder refuses the frame
        check_decode(changed)
    value = {**raw, "decoded_f32": raw["decoded_f32"].replace("40a00000", "40a00001")}
    with pytest.raises(AssertionError):
        check_decode(value)
    zero = _frame("negative_zero_min")
    with pytest.raises(AssertionError):  # -0.0 where +0.0 is expected
        check_decode({**zero, "decoded_f32": zero["decoded_f32"].replace("00000000", "80000000", 1)})
    deflate = _frame("zlib_4x8x8_bits_2")
    with pytest.raises(AssertionError):
        check_encode({**deflate, "packed_hex": _flip(deflate["packed_hex"], 0)})
    refusal = copy.deepcopy(load("refusals.json")["frames"][0])
    with pytest.raises(AssertionError):
        check_refusal({**refusal, "field": "payload"})
    with pytest.raises(pytest.fail.Exception):  # a valid frame in place of the bad one
        check_refusal({**refusal, "frame_hex": raw["frame_hex"], "limits": raw["limits"]})
    version = next(v for v in load("refusals.json")["frames"] if v["name"] == "version_3")
    with pytest.raises(AssertionError):
        check_refusal({**version, "error": "CodecError", "grpc_status": "INVALID_ARGUMENT"})


def test_check_mode_fails_on_a_changed_file(generator: Any, tmp_path: Path) -> None:
    shutil.copytree(VECTORS, tmp_path, dirs_exist_ok=True)
    assert generator.check(tmp_path) == []
    path = tmp_path / "frames.json"
    text = path.read_text(encoding="utf-8")
    raw = _frame("pack_example_3_bits")
    path.write_text(text.replace(raw["frame_hex"], _flip(raw["frame_hex"], 10)), encoding="utf-8")
    problems = generator.check(tmp_path)
    assert len(problems) == 1 and "frames.json" in problems[0]
    (tmp_path / "header.json").unlink()
    assert any("header.json: missing" in p for p in generator.check(tmp_path))


def test_check_mode_accepts_another_valid_deflate_stream_only(generator: Any, tmp_path: Path) -> None:
    """A zlib build that compresses differently must not make --check fail; a stream of other bits must."""
    shutil.copytree(VECTORS, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "frames.json"
    text = path.read_text(encoding="utf-8")
    v = _frame("zlib_4x8x8_bits_2")
    frame = bytes.fromhex(v["frame_hex"])
    h = parse_header(frame)

    def restream(packed: bytes) -> str:  # one stored block: valid raw DEFLATE that no zlib would write here
        payload = b"\x01" + struct.pack("<HH", len(packed), len(packed) ^ 0xFFFF) + packed
        return (dataclasses.replace(h, payload_len=len(payload)).to_bytes() + payload).hex()

    def swap(new: str) -> None:
        doc = json.loads(text)
        case = next(c for c in doc["frames"] if c["name"] == v["name"])
        case["frame_hex"], case["header_hex"] = new, new[: 2 * parse_header(bytes.fromhex(new)).header_len]
        case["payload_len"] = parse_header(bytes.fromhex(new)).payload_len
        path.write_text(generator.text_of(doc), encoding="utf-8")

    packed = bytes.fromhex(v["packed_hex"])
    alike = restream(packed)
    assert alike != v["frame_hex"]
    swap(alike)
    assert generator.check(tmp_path) == []
    swap(restream(bytes((packed[0] ^ 0x40,)) + packed[1:]))
    assert len(generator.check(tmp_path)) == 1
