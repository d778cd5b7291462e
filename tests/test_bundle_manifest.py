"""The bundle manifest: schema validation and clear errors for bad bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slimsplit.bundle import SCHEMA_VERSION, Bundle, default_bundle_path, read_manifest
from slimsplit.errors import BundleError, UnknownMode


@pytest.fixture()
def bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), dst)
    return dst


def _edit(root: Path, fn) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads((root / "manifest.json").read_text())
    fn(raw)
    (root / "manifest.json").write_text(json.dumps(raw))


def test_shipped_bundle_is_complete_and_valid() -> None:
    b = Bundle.open(default_bundle_path())
    m = b.manifest
    assert m.schema_version == SCHEMA_VERSION
    assert len(m.widths) >= 4 and len(m.bit_depths) >= 4 and len(m.modes) >= 16
    for mode in m.modes:
        assert mode.accuracy is not None and 0.0 <= mode.accuracy <= 1.0
        assert mode.payload_bytes_mean is not None and mode.payload_bytes_mean > 0
        assert mode.encoder_ms_p50 is not None and mode.encoder_ms_p50 > 0
        assert b.tail_path(mode).is_file()
    assert m.split.head and m.split.tail and not set(m.split.head) & set(m.split.tail)


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    m = read_manifest(default_bundle_path())
    (tmp_path / "manifest.json").write_text(m.to_json())
    assert read_manifest(tmp_path) == m


def test_wrong_schema_version_is_refused(bundle_copy: Path) -> None:
    _edit(bundle_copy, lambda r: r.update(schema_version=99))
    with pytest.raises(BundleError, match="schema_version 99"):
        Bundle.open(bundle_copy)


def test_missing_file_is_named(bundle_copy: Path) -> None:
    (bundle_copy / "tails" / "w4.onnx").unlink()
    with pytest.raises(BundleError, match=r"missing tails/w4\.onnx"):
        Bundle.open(bundle_copy)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle manifest"):
        Bundle.open(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.open(tmp_path / "nope")


def test_not_json(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("modes"), "missing required field 'modes'"),
        (lambda r: r.update(modes=[]), "non-empty list"),
        (lambda r: r["modes"][0].update(bits=0), r"modes\[0\]\.bits"),
        (lambda r: r["modes"][0].update(width=10_000), r"modes\[0\]\.width"),
        (lambda r: r["modes"][0].update(accuracy=1.5), "fraction"),
        (lambda r: r["modes"][0].update(tail="../../etc/passwd"), "stay inside"),
        (lambda r: r["modes"][1].update(name=r["modes"][0]["name"]), "duplicate mode name"),
        (lambda r: r["input"].update(mean=[0.5]), "input.mean"),
        (lambda r: r["input"].update(std=[0.0, 1.0, 1.0]), "std must be positive"),
        (lambda r: r.update(classes=["one"]), "at least two"),
    ],
)
def test_invalid_fields_are_named(bundle_copy: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    _edit(bundle_copy, edit)
    with pytest.raises(BundleError, match=message):
        Bundle.open(bundle_copy)


def test_unknown_mode_lists_known_modes() -> None:
    m = read_manifest(default_bundle_path())
    with pytest.raises(UnknownMode, match="known modes: w2b1"):
        m.mode("w3b3")
