"""Export a trained split model to a bundle (ONNX encoder + per-width ONNX tails + torch checkpoint + manifest)."""

from slimsplit.server.export.bundle_writer import measure_modes, preprocess, write_bundle
from slimsplit.server.export.onnx_export import export_encoder, export_tail

__all__ = ["export_encoder", "export_tail", "measure_modes", "preprocess", "write_bundle"]
