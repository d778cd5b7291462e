"""Model bundles: manifest schema, loading and validation (standard library only)."""

from slimsplit.bundle.bundle import Bundle, default_bundle_path, default_samples_path
from slimsplit.bundle.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    EncoderSpec,
    FeatureSpec,
    InputSpec,
    Manifest,
    ModeSpec,
    SplitSpec,
    read_manifest,
)

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "Bundle",
    "EncoderSpec",
    "FeatureSpec",
    "InputSpec",
    "Manifest",
    "ModeSpec",
    "SplitSpec",
    "default_bundle_path",
    "default_samples_path",
    "read_manifest",
]
