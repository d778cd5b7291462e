"""Export a trained split model to a bundle (ONNX encoder + per-width ONNX tails + torch checkpoint + manifest)."""

from slimsplit.server.export.bundle_writer import (
    ModeQuality,
    evaluate_mode,
    measure_modes,
    preprocess,
    widest_features,
    write_bundle,
)
from slimsplit.server.export.onnx_export import export_encoder, export_tail

__all__ = [
    "ModeQuality",
    "evaluate_mode",
    "export_encoder",
    "export_tail",
    "measure_modes",
    "preprocess",
    "widest_features",
    "write_bundle",
]
