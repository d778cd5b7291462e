"""The learned huffman coder: code construction, exact round trips, hostile streams, bundle tables, and a real
gRPC server decoding huffman-coded frames with the tables of its bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from fixtures_bundle import TinyBundle, write_tiny_bundle
from hypothesis import given, settings
from hypothesis import strategies as st

from slimsplit.bundle import Bundle, Manifest
from slimsplit.bundle.codec_tables import load_codec_tables, write_codec_tables
from slimsplit.codec import HuffmanTables, decode_features, encode_features, peek_header
from slimsplit.codec.bitpack import pack_bits
from slimsplit.codec.huffman import MAX_CODE_LEN, byte_contexts, code_lengths, count_bytes, count_frame_bytes
from slimsplit.codec.quantize import quantize
from slimsplit.errors import BundleError, CodecError
from slimsplit.server.app import ServerThread
from slimsplit.server.config import GrpcConfig, ServerConfig
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc


def relu_features(c: int, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(-0.3, 1.0, (c, 8, 8)), 0).astype(np.float32)


def fitted(c: int, bits: int, n: int = 300) -> HuffmanTables:
    return HuffmanTables.fit(count_frame_bytes(np.stack([relu_features(c, s) for s in range(n)]), bits))


def test_frame_byte_counts_are_the_packed_bytes_per_channel_and_add_up() -> None:
    frames = np.stack([relu_features(4, s) for s in range(30)])
    for bits in (1, 3, 8):
        ctx = byte_contexts((4, 8, 8), bits, 4)
        packed = [pack_bits(quantize(f, bits)[0], bits) for f in frames]
        counts = count_frame_bytes(frames, bits)
        assert counts.shape == (4, 256) and counts.sum() == 30 * len(packed[0])
        assert np.array_equal(counts, count_bytes(packed, ctx, 4))
        assert np.array_equal(counts, count_frame_bytes(frames[:11], bits) + count_frame_bytes(frames[11:], bits))


# ------------------------------------------------------------------------------------------ the code


def test_code_lengths_are_a_complete_prefix_code_within_the_limit() -> None:
    skewed = 2 ** np.arange(256, dtype=np.float64)  # optimal code would be 255 bits long
    for counts in (np.zeros(256), np.arange(256), np.minimum(skewed, 2**62).astype(np.int64)):
        lengths = code_lengths(counts)
        assert lengths.shape == (256,) and lengths.dtype == np.uint8
        assert lengths.min() >= 1 and lengths.max() <= MAX_CODE_LEN
        assert (2.0 ** -lengths.astype(float)).sum() == pytest.approx(1.0)  # complete: every window decodes


def test_frequent_bytes_get_short_codes() -> None:
    counts = np.ones(256, np.int64)
    counts[0] = 10_000
    lengths = code_lengths(counts)
    assert lengths[0] == 1 and lengths[1:].min() > 1


@pytest.mark.parametrize(
    ("lengths", "match"),
    [
        (np.full((1, 255), 8, np.uint8), r"\[K, 256\]"),
        (np.zeros((1, 256), np.uint8), "1..12"),
        (np.full((1, 256), 13, np.uint8), "1..12"),
        (np.full((1, 256), 7, np.uint8), "Kraft"),  # over-full
        (np.full((1, 256), 9, np.uint8), "complete prefix code"),  # incomplete: some windows would not decode
    ],
)
def test_bad_tables_raise_codec_error(lengths: npt.NDArray[np.uint8], match: str) -> None:
    with pytest.raises(CodecError, match=match):
        HuffmanTables(lengths)


def test_fingerprint_tells_tables_apart() -> None:
    a, b = fitted(4, 2), fitted(4, 4)
    assert a.fingerprint() == HuffmanTables(a.lengths.copy()).fingerprint()
    assert a.fingerprint() != b.fingerprint()


@given(data=st.binary(min_size=1, max_size=300), contexts=st.integers(1, 4), seed=st.integers(0, 10))
@settings(max_examples=100, deadline=None)
def test_any_bytes_round_trip_under_any_tables(data: bytes, contexts: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tables = HuffmanTables.fit(rng.integers(0, 50, (contexts, 256)))
    ctx = rng.integers(0, contexts, len(data)).astype(np.intp)
    assert tables.decode(tables.encode(data, ctx), ctx) == data


# ------------------------------------------------------------------------------------------ in the codec


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_huffman_frames_decode_to_the_reference_dequantization(bits: int) -> None:
    tables = fitted(4, bits)
    for seed in range(1000, 1010):
        x = relu_features(4, seed)
        frame = encode_features(x, bits, entropy="huffman", tables=tables)
        h = peek_header(frame)
        assert (h.version, h.coder, h.bits, h.shape) == (2, "huffman", bits, (4, 8, 8))
        reference = decode_features(encode_features(x, bits, entropy="none")).array
        np.testing.assert_array_equal(decode_features(frame, tables=tables).array, reference)


def test_auto_uses_the_tables_and_beats_the_table_free_coders() -> None:
    """On frames like the fitting data the learned code wins in auto mode, and auto is never larger."""
    for bits in (1, 2, 4):
        tables = fitted(4, bits)
        with_tables, without = [], []
        for seed in range(1000, 1040):
            x = relu_features(4, seed)
            with_tables.append(encode_features(x, bits, tables=tables))
            without.append(encode_features(x, bits))
        assert all(len(a) <= len(b) for a, b in zip(with_tables, without, strict=True))
        assert sum(peek_header(f).coder == "huffman" for f in with_tables) > 20
        assert sum(map(len, with_tables)) < 0.95 * sum(map(len, without))


def test_missing_tables_are_a_clear_error() -> None:
    tables = fitted(2, 2)
    frame = encode_features(relu_features(2, 5), 2, entropy="huffman", tables=tables)
    with pytest.raises(CodecError, match="needs the model's code tables"):
        decode_features(frame)
    with pytest.raises(CodecError, match="needs the mode's code tables"):
        encode_features(relu_features(2, 5), 2, entropy="huffman")
    with pytest.raises(CodecError, match="HuffmanTables or None"):
        encode_features(relu_features(2, 5), 2, tables="w2b2")  # type: ignore[arg-type]


def test_hostile_huffman_streams_raise_codec_error() -> None:
    tables = fitted(2, 4)
    frame = encode_features(relu_features(2, 7), 4, entropy="huffman", tables=tables)
    h = peek_header(frame)
    payload = frame[h.header_len :]
    ctx = byte_contexts(h.shape, h.bits, tables.contexts)
    with pytest.raises(CodecError, match="truncated"):
        tables.decode(payload[: len(payload) // 2], ctx)
    with pytest.raises(CodecError, match="trailing"):
        tables.decode(payload + b"\x00", ctx)
    with pytest.raises(CodecError, match=r"truncated|padding|trailing"):
        tables.decode(payload[:-1] + bytes([payload[-1] | 1]), ctx)  # a set padding bit, or one more code
    with pytest.raises(CodecError, match="cannot hold"):
        tables.decode(b"\x00", np.zeros(9, np.intp))


# ------------------------------------------------------------------------------------------ bundle tables


def test_bundle_tables_round_trip(tmp_path: Path) -> None:
    tiny = write_tiny_bundle(tmp_path / "b", codec_tables=True)
    loaded = load_codec_tables(Bundle.open(tiny.root))
    assert set(loaded) == set(tiny.manifest.mode_names)
    for name, t in loaded.items():
        assert t.fingerprint() == tiny.tables[name].fingerprint()
    assert load_codec_tables(Bundle.open(write_tiny_bundle(tmp_path / "plain").root)) == {}


def test_bad_bundle_tables_raise_bundle_error(tmp_path: Path) -> None:
    tiny = write_tiny_bundle(tmp_path / "b", codec_tables=True)
    path = tiny.root / "codec_tables.npz"
    other = {name: HuffmanTables(np.roll(t.lengths, 1, axis=1)) for name, t in tiny.tables.items()}
    write_codec_tables(path, other)  # well-formed tables, but not the ones the manifest was written with
    with pytest.raises(BundleError, match="not the ones the manifest"):
        load_codec_tables(Bundle.open(tiny.root))
    some = dict(list(tiny.tables.items())[:-1])
    write_codec_tables(path, some)  # a mode without a table is allowed (it has no learned code) ...
    with pytest.raises(BundleError, match="not the ones the manifest"):  # ... but these are not the shipped ones
        load_codec_tables(Bundle.open(tiny.root))
    manifest = (tiny.root / "manifest.json").read_text()
    (tiny.root / "manifest.json").write_text(manifest.replace(f'"{tiny.manifest.codec_tables_fingerprint}"', "null"))
    assert set(load_codec_tables(Bundle.open(tiny.root))) == set(some)  # no fingerprint recorded: not checked
    wrong = {**tiny.tables, "w2b2": HuffmanTables(np.full((3, 256), 8, np.uint8))}
    write_codec_tables(path, wrong)
    with pytest.raises(BundleError, match="expected uint8"):
        load_codec_tables(Bundle.open(tiny.root))
    write_codec_tables(path, {**tiny.tables, "w9b9": tiny.tables["w2b2"]})
    with pytest.raises(BundleError, match="unknown modes"):
        load_codec_tables(Bundle.open(tiny.root))
    path.write_bytes(b"not a zip file")
    with pytest.raises(BundleError, match=r"cannot load codec tables codec_tables\.npz: not a complete zip archive"):
        load_codec_tables(Bundle.open(tiny.root))
    path.unlink()
    with pytest.raises(BundleError, match=r"missing codec_tables\.npz"):
        Bundle.open(tiny.root)


def test_tables_added_to_an_exported_bundle_shrink_its_frames(tmp_path: Path) -> None:
    """The command that adds tables to a bundle: fitted on training images, payload sizes re-measured."""
    from slimsplit.edge.runtime import EncoderRuntime
    from slimsplit.server.export.codec_tables import add_tables_to_bundle

    tiny = write_tiny_bundle(tmp_path / "b")
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    manifest = add_tables_to_bundle(tiny.root, train, test)
    bundle = Bundle.open(tiny.root)
    assert bundle.manifest == manifest and manifest.codec_tables == "codec_tables.npz"
    runtime = EncoderRuntime(bundle)
    for mode in manifest.modes:
        runtime.set_mode(mode.name)
        frames = [runtime.encode(img).payload for img in test]
        assert mode.payload_bytes_mean == pytest.approx(np.mean([len(f) for f in frames]), abs=1e-3)
        tables = load_codec_tables(bundle).get(mode.name)  # None where the table did not pay
        for f in frames[:5]:
            decode_features(f, tables=tables)  # the runtime's frames decode with the bundle's tables


def test_tables_are_shipped_only_for_modes_where_they_pay(tmp_path: Path) -> None:
    from slimsplit.server.export.codec_tables import fit_tables_on_features

    manifest = write_tiny_bundle(tmp_path / "b").manifest  # modes w2b2 w2b8 w4b2 w4b8 of [C, 4, 4]
    rng = np.random.default_rng(0)
    sparse = np.maximum(rng.normal(-1.0, 1.0, (400, 4, 4, 4)), 0).astype(np.float32)
    assert set(fit_tables_on_features(manifest, sparse, min_saving=-1.0)) == set(manifest.mode_names)
    assert fit_tables_on_features(manifest, sparse, min_saving=0.99) == {}
    kept = fit_tables_on_features(manifest, sparse)  # the default rule: at least 3% smaller on held-out frames
    assert "w2b2" in kept  # 2-bit frames of sparse features: the learned code wins clearly


def test_the_edge_refuses_a_server_whose_codec_tables_differ(tmp_path: Path) -> None:
    from slimsplit.edge.run import check_server

    with_tables = write_tiny_bundle(tmp_path / "t", codec_tables=True).manifest
    without = write_tiny_bundle(tmp_path / "p").manifest

    def describe(served: Manifest) -> pb.DescribeResponse:
        info = pb.ModelInfo(
            name=served.name, version=served.version, feature_shape=[4, 4, 4], manifest_json=served.to_json()
        )
        info.modes.extend(pb.ModeInfo(name=m.name, width=m.width, bits=m.bits) for m in served.modes)
        return pb.DescribeResponse(protocol_version=1, models=[info])

    assert check_server(describe(with_tables), with_tables, ["w2b2"], "srv") == with_tables.version
    assert check_server(describe(without), without, ["w2b2"], "srv") == without.version
    for served, edge in ((without, with_tables), (with_tables, without)):
        with pytest.raises(BundleError, match="codec tables"):
            check_server(describe(served), edge, ["w2b2"], "srv")


# ------------------------------------------------------------------------------------------ on a real server


@pytest.fixture(scope="module")
def tiny_with_tables(tmp_path_factory: pytest.TempPathFactory) -> TinyBundle:
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", codec_tables=True)


def test_server_decodes_huffman_frames_with_its_bundle_tables(tiny_with_tables: TinyBundle, tmp_path: Path) -> None:
    tiny = tiny_with_tables
    plain_root = tmp_path / "plain"  # the same model without the tables: huffman frames must be refused
    shutil.copytree(tiny.root, plain_root)
    (plain_root / "codec_tables.npz").unlink()
    manifest = (plain_root / "manifest.json").read_text().replace('"codec_tables.npz"', "null")
    (plain_root / "manifest.json").write_text(manifest)

    def request(mode: str, seed: int) -> pb.FeatureFrame:
        x = tiny.features(mode, seed)
        data = encode_features(x, tiny.mode(mode).bits, entropy="huffman", tables=tiny.tables[mode])
        return pb.FeatureFrame(protocol_version=1, frame_id=seed, model="tiny", mode=mode, top_k=1, features=data)

    config = ServerConfig(models=(tiny.root,), grpc=GrpcConfig(port=0, grace_s=2.0))
    with ServerThread(config) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        for mode in tiny.manifest.mode_names:
            for seed in range(3):
                f = request(mode, seed)
                reply = stub.Infer(f, timeout=10)
                assert reply.classes[0] == int(np.argmax(tiny.reference_logits(mode, f.features)))
    plain = ServerConfig(models=(plain_root,), grpc=GrpcConfig(port=0, grace_s=2.0))
    with ServerThread(plain) as srv, grpc.insecure_channel(srv.address) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.SplitInferenceStub(ch).Infer(request("w2b2", 0), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "code tables" in (info.value.details() or "")
