"""Write a model bundle and measure every mode on the real edge path (ONNX Runtime encoder + codec + ORT tail).

The accuracy, payload bytes and latencies in the manifest are measured here, on the exported artifacts and the
real codec, so the manifest describes what a deployment will actually see.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from torch import nn

from slimsplit.bundle import EncoderSpec, FeatureSpec, InputSpec, Manifest, ModeSpec, SplitSpec
from slimsplit.codec import HuffmanTables, decode_features, encode_features
from slimsplit.server.export.onnx_export import export_backbone, export_encoder, export_tail
from slimsplit.server.models import SplitModel

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class ModeMeasurement:
    accuracy: float
    payload_bytes_mean: float
    encoder_ms_p50: float
    tail_ms_p50: float


def _session(path: Path, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def preprocess(images: npt.NDArray[np.uint8], spec: InputSpec) -> npt.NDArray[np.float32]:
    """uint8 [N,H,W,3] -> float32 [N,3,H,W], normalized exactly as the edge runtime does."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    mean = np.asarray(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _p50_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def widest_features(root: Path, manifest: Manifest, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Encoder output at the widest width for every image (ORT, all threads); narrower modes are slices of it."""
    enc = _session(root / manifest.encoder.file, threads=0)
    width = np.array([manifest.feature.max_channels], np.int64)
    feats = [
        enc.run(
            [manifest.encoder.output],
            {
                manifest.encoder.image_input: preprocess(images[i : i + 256], manifest.input),
                manifest.encoder.width_input: width,
            },
        )[0]
        for i in range(0, len(images), 256)
    ]
    return np.concatenate(feats).astype(np.float32, copy=False)


@dataclass(frozen=True)
class ModeQuality:
    accuracy: float
    payload_bytes_mean: float  # real encoded bytes per frame, header included
    decoded: npt.NDArray[np.float32]  # the features the tail saw, [N, width, H, W]


def evaluate_mode(
    tail: ort.InferenceSession,
    widest: npt.NDArray[np.float32],
    mode: ModeSpec,
    labels: npt.NDArray[np.int64],
    tables: HuffmanTables | None = None,
) -> ModeQuality:
    """One mode through the real codec (encode + decode per frame, batch 1, the mode's tables) and its ORT tail."""
    sizes = np.empty(len(widest), np.int64)
    decoded = np.empty((len(widest), mode.width, *widest.shape[2:]), np.float32)
    for i in range(len(widest)):
        payload = encode_features(widest[i, : mode.width], mode.bits, tables=tables)
        sizes[i] = len(payload)
        decoded[i] = decode_features(payload, tables=tables).array
    batches = [tail.run(None, {"features": decoded[i : i + 512]})[0] for i in range(0, len(decoded), 512)]
    logits = np.concatenate(batches)
    return ModeQuality(float((logits.argmax(1) == labels).mean()), float(sizes.mean()), decoded)


def measure_modes(
    root: Path,
    manifest: Manifest,
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.int64],
    *,
    latency_repeats: int = 50,
    progress: ProgressFn | None = None,
    tables: Mapping[str, HuffmanTables] | None = None,
) -> dict[str, ModeMeasurement]:
    """Accuracy and mean payload over ``images`` through ORT + the real codec; batch-1 latencies at 1 thread."""
    tables = tables or {}
    enc1 = _session(root / manifest.encoder.file, threads=1)
    full = widest_features(root, manifest, images)
    tails: dict[str, ort.InferenceSession] = {}
    out: dict[str, ModeMeasurement] = {}
    one = preprocess(images[:1], manifest.input)
    for mode in manifest.modes:
        if progress:
            progress(f"measuring {mode.name}")
        tail = tails.setdefault(mode.tail, _session(root / mode.tail, threads=0))
        mode_tables = tables.get(mode.name)
        quality = evaluate_mode(tail, full, mode, labels, mode_tables)
        decoded = quality.decoded
        width_arr = np.array([mode.width], np.int64)

        def encode_one(
            w: npt.NDArray[np.int64] = width_arr, bits: int = mode.bits, t: HuffmanTables | None = mode_tables
        ) -> None:
            f = enc1.run(
                [manifest.encoder.output],
                {manifest.encoder.image_input: one, manifest.encoder.width_input: w},
            )[0]
            encode_features(f[0], bits, tables=t)

        tail1 = _session(root / mode.tail, threads=1)
        z = decoded[:1]

        def tail_one(t: ort.InferenceSession = tail1, z: npt.NDArray[np.float32] = z) -> None:
            t.run(None, {"features": z})

        out[mode.name] = ModeMeasurement(
            accuracy=quality.accuracy,
            payload_bytes_mean=quality.payload_bytes_mean,
            encoder_ms_p50=_p50_ms(encode_one, latency_repeats),
            tail_ms_p50=_p50_ms(tail_one, latency_repeats),
        )
    return out


def write_bundle(
    model: SplitModel,
    root: Path,
    *,
    name: str,
    version: str,
    classes: tuple[str, ...],
    input_spec: InputSpec,
    test_images: npt.NDArray[np.uint8],
    test_labels: npt.NDArray[np.int64],
    notes: dict[str, object] | None = None,
    baseline: nn.Module | None = None,
    progress: ProgressFn | None = None,
    latency_repeats: int = 50,
    fit_images: npt.NDArray[np.uint8] | None = None,
) -> Manifest:
    """Export ``model`` to ``root`` (encoder, tails, checkpoint), measure every mode, write ``manifest.json``.

    With ``fit_images`` (training images, uint8 NHWC) the feature codec's huffman tables are fitted on them
    and shipped in the bundle (``codec_tables.npz``), and every measurement uses them.
    """
    root.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    cfg = model.config
    enc_spec = EncoderSpec()
    export_encoder(
        model,
        root / enc_spec.file,
        image_input=enc_spec.image_input,
        width_input=enc_spec.width_input,
        output=enc_spec.output,
    )
    for w in cfg.bottleneck.widths:
        export_tail(model, w, root / "tails" / f"w{w}.onnx")
    model.save(root / "model.pt")
    baseline_file = None
    if baseline is not None:
        baseline_file = "baseline/backbone.onnx"
        export_backbone(baseline.cpu().eval(), model.config.input_shape, root / baseline_file)
    c, h, w_ = model.feature_shape
    modes = tuple(
        ModeSpec(name=ModeSpec.make_name(w, b), width=w, bits=b, tail=f"tails/w{w}.onnx")
        for w in sorted(cfg.bottleneck.widths)
        for b in sorted(cfg.bottleneck.bits)
    )
    manifest = Manifest(
        name=name,
        version=version,
        classes=classes,
        input=input_spec,
        split=SplitSpec(backbone=cfg.backbone, head=tuple(model.head_names), tail=tuple(model.tail_names)),
        feature=FeatureSpec(max_channels=c, height=h, width=w_),
        encoder=enc_spec,
        modes=modes,
        baseline_model=baseline_file,
        notes=dict(notes or {}),
    )
    tables: dict[str, HuffmanTables] = {}
    if fit_images is not None:
        from slimsplit.server.export.codec_tables import fit_codec_tables, ship_tables

        if progress:
            progress(f"fitting codec tables on {len(fit_images)} training images")
        tables = fit_codec_tables(root, manifest, fit_images)
        manifest = ship_tables(root, manifest, tables)
    measured = measure_modes(
        root, manifest, test_images, test_labels, latency_repeats=latency_repeats, progress=progress, tables=tables
    )
    modes = tuple(
        ModeSpec(
            name=m.name,
            width=m.width,
            bits=m.bits,
            tail=m.tail,
            accuracy=round(measured[m.name].accuracy, 6),
            payload_bytes_mean=round(measured[m.name].payload_bytes_mean, 3),
            encoder_ms_p50=round(measured[m.name].encoder_ms_p50, 4),
            tail_ms_p50=round(measured[m.name].tail_ms_p50, 4),
        )
        for m in modes
    )
    notes_out = {**manifest.notes, "measured_on_images": len(test_images)}
    manifest = Manifest(**{**manifest.__dict__, "modes": modes, "notes": notes_out})
    (root / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    return manifest
