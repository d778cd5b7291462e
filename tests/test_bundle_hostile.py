"""Hostile bundles: each is refused at load with a BundleError that names the file and the problem, in bounded
memory (issue 15, item 10). Every case starts from a copy of the shipped bundle."""

from __future__ import annotations

import json
import math
import resource
import shutil
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib import format as npy

from slimsplit.bundle import Bundle, default_bundle_path, limits, read_manifest
from slimsplit.bundle.codec_tables import load_codec_tables
from slimsplit.codec import header
from slimsplit.errors import BundleError
from slimsplit.server.grpc_service import manifest_to_model_info
from slimsplit.server.repository import discover_all

Raw = dict[str, Any]


@pytest.fixture()
def bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), dst)
    return dst


def _raw(root: Path) -> Raw:
    raw: Raw = json.loads((root / "manifest.json").read_text())
    return raw


def _write(root: Path, raw: Raw, **dumps: Any) -> None:
    (root / "manifest.json").write_text(json.dumps(raw, **dumps))


def _edit(root: Path, fn: Callable[[Raw], object]) -> None:
    raw = _raw(root)
    fn(raw)
    _write(root, raw)


def _refused(root: Path, match: str) -> BundleError:
    """Open ``root``: it must fail with a BundleError matching ``match`` (never another exception)."""
    with pytest.raises(BundleError, match=match) as info:
        Bundle.open(root)
    assert len(str(info.value)) < 1000  # a hostile value never makes a huge message
    return info.value


def _names_manifest(root: Path, exc: BundleError) -> None:
    assert str(root / "manifest.json") in str(exc)


# ---------------------------------------------------------------------------------------------- (a) nesting


@pytest.mark.parametrize("depth", [limits.MAX_JSON_DEPTH, 1_000, 200_000])
def test_deeply_nested_manifest_is_refused_before_parsing(bundle_copy: Path, depth: int) -> None:
    text = (bundle_copy / "manifest.json").read_text()
    deep = "[" * depth + "]" * depth  # notes sit at level 2, so even MAX_JSON_DEPTH levels below them are too many
    (bundle_copy / "manifest.json").write_text(text.replace('"notes": {', f'"notes": {{"deep": {deep}, ', 1))
    exc = _refused(bundle_copy, f"nested deeper than {limits.MAX_JSON_DEPTH} levels")
    _names_manifest(bundle_copy, exc)


def test_a_bare_deep_array_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").write_text("[" * 500_000)
    _refused(bundle_copy, "nested deeper")


def test_brackets_inside_strings_do_not_count(bundle_copy: Path) -> None:
    _edit(bundle_copy, lambda r: r["notes"].update(text="[{" * 100 + '\\"[[[', nested={"a": {"b": [[1]]}}))
    assert Bundle.open(bundle_copy).manifest.notes["text"].startswith("[{[{")


def test_depth_scan_is_exact() -> None:
    assert limits.json_depth_problem("[" * 16 + "]" * 16) is None
    assert limits.json_depth_problem("[" * 17) is not None
    assert limits.json_depth_problem('"' + "[" * 100) is None  # an unterminated string runs to the end
    assert limits.json_depth_problem('["\\\\", [[[]]]]', max_depth=3) is not None  # an escaped backslash ends
    assert limits.json_depth_problem('["\\"[[[[", []]', max_depth=2) is None  # an escaped quote does not


# ---------------------------------------------------------------------------------------------- (b) size


def test_manifest_over_the_byte_cap_is_refused_unread(bundle_copy: Path) -> None:
    _edit(bundle_copy, lambda r: r["notes"].update(blob="x" * limits.MAX_MANIFEST_BYTES))
    exc = _refused(bundle_copy, f"over {limits.MAX_MANIFEST_BYTES} bytes")
    _names_manifest(bundle_copy, exc)
    assert "Describe" in str(exc)


def test_manifest_too_big_as_served_is_refused(bundle_copy: Path) -> None:
    """Compact on disk (under the cap) but over it as the server sends it (indented JSON, in every Describe)."""
    n = limits.MAX_MANIFEST_BYTES // 4
    raw = _raw(bundle_copy)
    raw["notes"]["zeros"] = [0] * n
    _write(bundle_copy, raw, separators=(",", ":"))
    assert (bundle_copy / "manifest.json").stat().st_size < limits.MAX_MANIFEST_BYTES
    _refused(bundle_copy, "bytes as served")


def test_every_manifest_that_loads_fits_a_describe_answer(bundle_copy: Path) -> None:
    """The worst ModelInfo for its manifest size: as many classes as fit under the cap (each sent twice: in the
    manifest JSON and as a class list), and as many modes as allowed."""
    raw = _raw(bundle_copy)
    raw["modes"] = [dict(raw["modes"][0], name=f"m{i}") for i in range(limits.MAX_MODES)]
    raw.pop("codec_tables")
    raw.pop("codec_tables_fingerprint")
    room = limits.MAX_MANIFEST_BYTES - len(read_manifest_text(raw)) - 1024
    per_class = limits.MAX_STRING_CHARS + 10  # the name, its quotes, comma, newline and indent
    raw["classes"] = [f"{i:0{limits.MAX_STRING_CHARS}d}" for i in range(room // per_class)]
    _write(bundle_copy, raw)
    manifest = Bundle.open(bundle_copy).manifest
    served = len(manifest.to_json())
    assert 0.98 * limits.MAX_MANIFEST_BYTES < served <= limits.MAX_MANIFEST_BYTES  # near the cap
    info = manifest_to_model_info(manifest)
    assert info.ByteSize() <= 2 * limits.MAX_MANIFEST_BYTES < 4 << 20  # the server's default send limit: 4 MiB


def read_manifest_text(raw: Raw) -> str:
    return json.dumps(raw, indent=2) + "\n"


def test_models_served_together_fit_one_describe_answer(tmp_path: Path) -> None:
    for name in ("a", "b"):
        root = tmp_path / "models" / name
        shutil.copytree(default_bundle_path(), root)
        raw = _raw(root)
        raw["name"] = name
        raw["notes"]["blob"] = "x" * (900 << 10)
        _write(root, raw)
        Bundle.open(root)  # each is fine alone
    with pytest.raises(BundleError, match="one Describe answer"):
        discover_all([tmp_path / "models"])


# ---------------------------------------------------------------------------------------------- (c) codec tables


def _bomb(path: Path, nbytes: int, level: int) -> None:
    """An ``.npz`` whose one member ``w2b1.npy`` is a ``nbytes`` uint8 array of zeros, deflated."""
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as archive,
        archive.open("w2b1.npy", "w", force_zip64=True) as f,
    ):
        npy.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (nbytes,)})
        chunk = bytes(1 << 20)
        for _ in range(nbytes >> 20):
            f.write(chunk)


@pytest.fixture(scope="module")
def bomb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one from the report: a 1 GiB array, a few MB on disk."""
    path = tmp_path_factory.mktemp("bomb") / "codec_tables.npz"
    _bomb(path, 1 << 30, level=1)
    assert path.stat().st_size < 8 << 20
    return path


@pytest.fixture(scope="module")
def small_bomb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 128 MiB array deflated to about 128 KB: under the file size cap of the shipped bundle's tables."""
    path = tmp_path_factory.mktemp("bomb") / "codec_tables.npz"
    _bomb(path, 128 << 20, level=9)
    return path


@pytest.fixture()
def measured() -> Iterator[Callable[[], int]]:
    """Peak Python-visible allocation (numpy arrays included) during the test body, via tracemalloc."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_decompression_bomb_in_codec_tables_is_refused_at_open(
    bundle_copy: Path, bomb_file: Path, small_bomb_file: Path, measured: Callable[[], int]
) -> None:
    rss_before = _max_rss_bytes()
    shutil.copy(bomb_file, bundle_copy / "codec_tables.npz")
    _refused(bundle_copy, r"codec tables codec_tables\.npz: the file is \d+ bytes, more than the \d+ that tables")
    shutil.copy(small_bomb_file, bundle_copy / "codec_tables.npz")
    assert (bundle_copy / "codec_tables.npz").stat().st_size < limits.codec_tables_max_bytes([2] * 16)
    _refused(bundle_copy, r"codec tables codec_tables\.npz: its members unpack to 1342\d{5} bytes, more than")
    assert measured() < 32 << 20
    assert _max_rss_bytes() - rss_before < 256 << 20  # generous: no array was unpacked


def test_decompression_bomb_is_refused_by_its_header_when_loaded_directly(
    bundle_copy: Path, bomb_file: Path, measured: Callable[[], int]
) -> None:
    """``load_codec_tables`` on a Bundle not made by ``Bundle.open``: the member's .npy header is checked before a
    byte of the array is read (the file itself is under the size cap here: its cap is raised by wide modes)."""
    manifest = Bundle.open(bundle_copy).manifest
    shutil.copy(bomb_file, bundle_copy / "codec_tables.npz")
    wide = Bundle(root=bundle_copy, manifest=_with_widths(manifest, 4096))
    rss_before = _max_rss_bytes()
    with pytest.raises(BundleError, match=r"w2b1\.npy holds uint8 \(1073741824,\), expected uint8 \(4096, 256\)"):
        load_codec_tables(wide)
    assert measured() < 32 << 20
    assert _max_rss_bytes() - rss_before < 256 << 20


def _with_widths(manifest: Any, width: int) -> Any:
    from dataclasses import replace

    return replace(manifest, modes=tuple(replace(m, width=width) for m in manifest.modes))


def _npz(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npy(array: np.ndarray[Any, Any], extra: bytes = b"") -> bytes:
    import io

    buf = io.BytesIO()
    npy.write_array(buf, array, allow_pickle=True)
    return buf.getvalue() + extra


def _tables_with(bundle: Path, name: str, data: bytes) -> None:
    with np.load(bundle / "codec_tables.npz") as npz:
        members = {f"{k}.npy": _npy(npz[k]) for k in npz.files}
    members[name] = data
    _npz(bundle / "codec_tables.npz", members)


@pytest.mark.parametrize(
    ("member", "data", "message"),
    [
        ("w2b1.npy", _npy(np.zeros((2, 256), np.uint8), b"\0" * 50_000), "unpacks to 50\\d+ bytes, but its header"),
        ("w2b1.npy", _npy(np.zeros((2, 256), np.float64)), r"holds float64 \(2, 256\), expected uint8"),
        ("w2b1.npy", _npy(np.array([None, 1], dtype=object)), r"holds object \(2,\)"),
        ("max_len.npy", _npy(np.zeros(3, np.int64)), r"max_len\.npy holds int64 \(3,\), expected an integer \(\)"),
        ("max_len.npy", _npy(np.asarray(np.float32(12.0))), r"max_len\.npy holds float32 \(\), expected an integer"),
        ("../../etc.npy", b"x", "unknown modes"),
        ("w2b1", b"x", "unknown modes"),
        ("w2b1.npy", b"\x93NUMPY\x09\x00", r"unsupported \.npy version \(9, 0\)"),
        ("w2b1.npy", b"garbage", "cannot read the codec tables"),
    ],
)
def test_lying_codec_table_members_are_refused_before_reading(
    bundle_copy: Path, member: str, data: bytes, message: str
) -> None:
    _tables_with(bundle_copy, member, data)
    with pytest.raises(BundleError, match=message) as info:
        load_codec_tables(Bundle.open(bundle_copy))
    assert str(bundle_copy / "codec_tables.npz") in str(info.value)


def test_the_codec_tables_file_is_capped_by_its_modes(bundle_copy: Path) -> None:
    manifest = read_manifest(bundle_copy)
    cap = limits.codec_tables_max_bytes(m.width for m in manifest.modes)
    with (bundle_copy / "codec_tables.npz").open("ab") as f:
        f.write(b"\0" * cap)
    _refused(bundle_copy, f"bytes, more than the {cap} that tables")
    with pytest.raises(BundleError, match="more than the"):
        load_codec_tables(Bundle(root=bundle_copy, manifest=manifest))


# ---------------------------------------------------------------------------------------------- (d) symlinks


def test_symlinked_tail_outside_the_bundle_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "w4.onnx"
    outside.parent.mkdir()
    (bundle_copy / "tails" / "w4.onnx").rename(outside)
    (bundle_copy / "tails" / "w4.onnx").symlink_to(outside)
    exc = _refused(bundle_copy, r"tail tails/w4\.onnx resolves to .*, outside the bundle folder")
    assert str(bundle_copy) in str(exc)


def test_symlinked_folder_outside_the_bundle_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "tails").rename(tmp_path / "tails")
    (bundle_copy / "tails").symlink_to(tmp_path / "tails", target_is_directory=True)
    _refused(bundle_copy, "outside the bundle folder")


@pytest.mark.parametrize("name", ["manifest.json", "codec_tables.npz", "model.pt", "encoder.onnx"])
def test_any_bundle_file_symlinked_outside_is_refused(bundle_copy: Path, tmp_path: Path, name: str) -> None:
    (bundle_copy / name).rename(tmp_path / name)
    (bundle_copy / name).symlink_to(tmp_path / name)
    _refused(bundle_copy, f"{name.replace('.', '[.]')} resolves to .*outside the bundle folder")


def test_symlink_to_a_device_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").unlink()
    (bundle_copy / "manifest.json").symlink_to("/dev/zero")
    _refused(bundle_copy, "outside the bundle folder")


def test_symlink_loop_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "tails" / "w4.onnx").unlink()
    (bundle_copy / "tails" / "w4.onnx").symlink_to(bundle_copy / "tails" / "w4.onnx")
    _refused(bundle_copy, r"tails/w4\.onnx")


def test_symlinks_that_stay_inside_are_fine(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "tails" / "w4.onnx").rename(bundle_copy / "w4-real.onnx")
    (bundle_copy / "tails" / "w4.onnx").symlink_to("../w4-real.onnx")
    Bundle.open(bundle_copy)
    link = tmp_path / "link-to-bundle"  # the bundle folder itself may be a link (a repository's "latest")
    link.symlink_to(bundle_copy, target_is_directory=True)
    Bundle.open(link)


# ---------------------------------------------------------------------------------------------- (e) names


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "../../etc"),
        ("name", "a/b"),
        ("name", ".hidden"),
        ("name", "x" * 65),
        ("name", "with space"),
        ("name", "nul\u0000"),
        ("name", "caf\u00e9"),
        ("name", ""),
        ("name", 7.5),
        ("version", "../1"),
        ("version", "1/2"),
        ("version", "1" * 33),
        ("version", True),
        ("version", {"a": 1}),
    ],
)
def test_unsafe_model_names_and_versions_are_refused(bundle_copy: Path, field: str, value: Any) -> None:
    _edit(bundle_copy, lambda r: r.update({field: value}))
    exc = _refused(bundle_copy, rf"manifest\.json: {field}: ")
    assert exc.context["field"] == field


def test_unsafe_mode_names_and_strings_are_refused(bundle_copy: Path) -> None:
    for i, (edit, message) in enumerate(
        [
            (lambda r: r["modes"][0].update(name="../w2b1"), r"modes\[0\]\.name"),
            (lambda r: r["modes"][0].update(name="w2b1\n"), r"modes\[0\]\.name"),
            (lambda r: r["classes"].__setitem__(0, "x" * 10_000), "classes.*10000 characters"),
            (lambda r: r["classes"].__setitem__(0, "bell\a"), "control characters"),
            (lambda r: r["modes"][0].update(tail="tails/\u0000.onnx"), "control characters"),
            (lambda r: r["modes"][0].update(tail="t/" * 200), "characters, more than"),
            (lambda r: r.update(codec_tables_fingerprint="../zz"), "codec_tables_fingerprint"),
            (lambda r: r.update(classes=[f"c{i}" for i in range(limits.MAX_CLASSES + 1)]), "classes: 65537 entries"),
        ]
    ):
        root = bundle_copy.parent / f"case{i}"
        shutil.copytree(bundle_copy, root)
        _edit(root, edit)
        _refused(root, message)


def test_numeric_version_is_read_as_a_string(bundle_copy: Path) -> None:
    _edit(bundle_copy, lambda r: r.update(version=3))
    assert Bundle.open(bundle_copy).manifest.version == "3"


# ---------------------------------------------------------------------------------------------- (f) figures


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("payload_bytes_mean", 1e300, "outside the sane range"),
        ("payload_bytes_mean", 0, "outside the sane range"),
        ("payload_bytes_mean", -5, "outside the sane range"),
        ("payload_bytes_mean", header.MAX_HEADER_SIZE + header.MAX_PAYLOAD + 1, "outside the sane range"),
        ("encoder_ms_p50", -0.1, "outside the sane range"),
        ("tail_ms_p50", -1, "outside the sane range"),
        ("tail_ms_p50", 1e9, "outside the sane range"),
        ("accuracy", 1.01, "fraction"),
        ("accuracy", -0.01, "fraction"),
        ("accuracy", "0.9", "finite number"),
        ("encoder_ms_p50", True, "finite number"),
    ],
)
def test_absurd_mode_figures_are_refused(bundle_copy: Path, key: str, value: Any, message: str) -> None:
    _edit(bundle_copy, lambda r: r["modes"][3].update({key: value}))
    exc = _refused(bundle_copy, rf"modes\[3\]\.{key}.*{message}")
    _names_manifest(bundle_copy, exc)


@pytest.mark.parametrize(
    ("literal", "message"),
    [("NaN", "NaN is not a number JSON allows"), ("Infinity", "Infinity is not"), ("-Infinity", "-Infinity is not")],
)
def test_non_finite_literals_are_refused(bundle_copy: Path, literal: str, message: str) -> None:
    text = (bundle_copy / "manifest.json").read_text()
    (bundle_copy / "manifest.json").write_text(text.replace('"accuracy": 0.6758', f'"accuracy": {literal}', 1))
    _refused(bundle_copy, f"not valid JSON: {message}")


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        ('"accuracy": 1e400', "finite number"),  # parses as inf
        ('"accuracy": ' + "9" * 5000, "not valid JSON"),  # over Python's integer-digits limit
        ('"accuracy": 0.5, "accuracy": 0.6', "duplicate key 'accuracy'"),
    ],
)
def test_odd_numbers_and_duplicate_keys_are_refused(bundle_copy: Path, replacement: str, message: str) -> None:
    text = (bundle_copy / "manifest.json").read_text()
    (bundle_copy / "manifest.json").write_text(text.replace('"accuracy": 0.6758', replacement, 1))
    _refused(bundle_copy, message)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["input"].update(std=[1e9] * 3), "input.std .* sane range"),
        (lambda r: r["input"].update(std=[1e-9] * 3), "input.std .* sane range"),
        (lambda r: r["input"].update(mean=[1e300] * 3), "input.mean .* sane range"),
        (lambda r: r["feature"].update(max_channels=4096, height=4096, width=4096), "values per frame"),
        (lambda r: r["input"].update(channels=16, height=8192, width=8192, mean=[0] * 16, std=[1] * 16), "per image"),
        (lambda r: r.update(modes=[r["modes"][0]] * (limits.MAX_MODES + 1)), "modes: 257 entries"),
        (lambda r: r["split"].update(head=["b"] * 1000), "split.head: 1000 entries"),
    ],
)
def test_absurd_shapes_and_normalisation_are_refused(bundle_copy: Path, edit: Any, message: str) -> None:
    _edit(bundle_copy, edit)
    _refused(bundle_copy, message)


def test_the_frame_cap_matches_the_codec() -> None:
    assert limits.MAX_FRAME_BYTES == header.MAX_HEADER_SIZE + header.MAX_PAYLOAD


# ---------------------------------------------------------------------------------------------- all of it


def test_only_bundle_errors_come_out_of_random_edits(bundle_copy: Path) -> None:
    """Random values in every manifest field: the bundle loads or a BundleError says why, nothing else."""
    base = _raw(bundle_copy)
    paths = [p for p in _leaf_paths(base) if p[0] != "notes"]
    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(10**20), 10**20)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=80),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=8,
    )

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.sampled_from(paths), values)
    def check(path: tuple[Any, ...], value: Any) -> None:
        raw = json.loads(json.dumps(base))
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        _write(bundle_copy, raw)
        try:
            Bundle.open(bundle_copy)
        except BundleError as exc:
            assert str(bundle_copy) in str(exc) and len(str(exc)) < 1000

    check()


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaf_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:2]):
            yield from _leaf_paths(v, (*prefix, i))


def test_the_shipped_bundle_is_well_inside_every_limit() -> None:
    bundle = Bundle.open(default_bundle_path())
    m = bundle.manifest
    assert len(m.to_json()) < limits.MAX_MANIFEST_BYTES // 100
    assert math.prod(m.feature.shape(m.feature.max_channels)) < limits.MAX_FEATURE_ELEMENTS
    tables = bundle.path(m.codec_tables or "")
    assert tables.stat().st_size < limits.codec_tables_max_bytes(mode.width for mode in m.modes) // 2
    assert load_codec_tables(bundle)
