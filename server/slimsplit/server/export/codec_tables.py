"""Fit the feature codec's huffman tables of a bundle on training features, and add them to a bundle.

``fit_codec_tables`` runs the bundle's ONNX encoder on training images, quantizes and packs every mode's
features exactly as the edge does, counts the packed bytes per channel and builds one length-limited
canonical Huffman code per channel and mode (``slimsplit.codec.huffman``). Fit on *training* images: the
manifest's payload sizes are then measured on the test images the tables never saw.

Command line (adds tables to a bundle exported without them and re-measures its payload sizes)::

    python -m slimsplit.server.export.codec_tables BUNDLE [--train-images 5000]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from slimsplit.bundle import Bundle, Manifest
from slimsplit.bundle.codec_tables import tables_fingerprint, write_codec_tables
from slimsplit.codec import encode_features
from slimsplit.codec.huffman import MAX_CODE_LEN, HuffmanTables, count_frame_bytes
from slimsplit.errors import SlimsplitError
from slimsplit.server.export.bundle_writer import widest_features

TABLES_FILE = "codec_tables.npz"
DEFAULT_FIT_IMAGES = 5000  # training images the tables are fitted on (export and this command line)
MIN_SAVING = 0.03  # ship a mode's table only if it saves at least this share of the bytes on held-out frames
HELD_OUT = 0.2  # share of the fitting frames that decides whether a table pays


def fit_tables_on_features(
    manifest: Manifest,
    widest: npt.NDArray[np.float32],
    max_len: int = MAX_CODE_LEN,
    min_saving: float = MIN_SAVING,
) -> dict[str, HuffmanTables]:
    """Tables per mode from widest-width features ``[N, C, H, W]`` (narrower modes are slices).

    A mode gets a table only when, fitted on the first 80% of the frames, it makes the codec's ``auto`` choice
    at least ``min_saving`` smaller on the other 20% than without it: decoding the learned code is a Python loop
    per byte (about 0.1-0.5 us), so on the large 4- and 8-bit frames, where DEFLATE is as good, it is left out.
    The shipped table is then fitted on all the frames.
    """
    tables: dict[str, HuffmanTables] = {}
    split = max(1, int(len(widest) * (1 - HELD_OUT)))
    for mode in manifest.modes:
        fitting, held_out = widest[:split, : mode.width], widest[split:, : mode.width]
        counts = count_frame_bytes(fitting, mode.bits)
        trial = HuffmanTables.fit(counts, max_len)
        with_table = sum(len(encode_features(f, mode.bits, tables=trial)) for f in held_out)
        without = sum(len(encode_features(f, mode.bits)) for f in held_out)
        if len(held_out) and with_table <= (1 - min_saving) * without:
            tables[mode.name] = HuffmanTables.fit(counts + count_frame_bytes(held_out, mode.bits), max_len)
    return tables


def fit_codec_tables(
    root: Path, manifest: Manifest, images: npt.NDArray[np.uint8], max_len: int = MAX_CODE_LEN
) -> dict[str, HuffmanTables]:
    """Tables fitted on the bundle encoder's features of ``images`` (uint8 NHWC training images)."""
    return fit_tables_on_features(manifest, widest_features(root, manifest, images), max_len)


def ship_tables(root: Path, manifest: Manifest, tables: Mapping[str, HuffmanTables]) -> Manifest:
    """Write ``tables`` into the bundle at ``root``; ``manifest`` naming them (file and fingerprint)."""
    write_codec_tables(root / TABLES_FILE, tables)
    return dataclasses.replace(manifest, codec_tables=TABLES_FILE, codec_tables_fingerprint=tables_fingerprint(tables))


def payload_bytes_means(
    manifest: Manifest, widest: npt.NDArray[np.float32], tables: Mapping[str, HuffmanTables]
) -> dict[str, float]:
    """Mean real frame bytes per mode (header included) with these tables."""
    return {
        m.name: float(np.mean([len(encode_features(f[: m.width], m.bits, tables=tables.get(m.name))) for f in widest]))
        for m in manifest.modes
    }


def add_tables_to_bundle(
    root: Path, train_images: npt.NDArray[np.uint8], test_images: npt.NDArray[np.uint8]
) -> Manifest:
    """Fit tables on ``train_images``, write them into the bundle and re-measure payload sizes on ``test_images``."""
    bundle = Bundle.open(root)
    manifest = bundle.manifest
    tables = fit_codec_tables(root, manifest, train_images)
    manifest = ship_tables(root, manifest, tables)
    sizes = payload_bytes_means(manifest, widest_features(root, manifest, test_images), tables)
    modes = tuple(dataclasses.replace(m, payload_bytes_mean=round(sizes[m.name], 3)) for m in manifest.modes)
    manifest = dataclasses.replace(manifest, modes=modes)
    (root / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--train-images", type=int, default=DEFAULT_FIT_IMAGES, help="training images to fit on")
    a = p.parse_args(argv)
    from slimsplit.server.training.data import TRAIN_SEED, RenderedFashion, fashion_test_set

    try:
        train = RenderedFashion.load("train").render(TRAIN_SEED, a.train_images).images
        test = fashion_test_set().images
        manifest = add_tables_to_bundle(a.bundle, train, test)
    except SlimsplitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for m in manifest.modes:
        print(f"{m.name}: {m.payload_bytes_mean:.1f} B/frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
