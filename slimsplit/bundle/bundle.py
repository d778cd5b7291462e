"""A bundle on disk: its folder, its manifest, and checked paths to its files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimsplit.bundle.files import onnx_problem, zip_problem
from slimsplit.bundle.manifest import Manifest, ModeSpec, read_manifest
from slimsplit.errors import BundleError

_ZIP_ROLES = ("codec tables", "torch checkpoint")


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, root: Path | str) -> Bundle:
        """Open a bundle folder, validate its manifest, check that every file it names exists and that each one is
        whole (:mod:`slimsplit.bundle.files`; the torch checkpoint is optional, but checked when present)."""
        root = Path(root)
        if not root.exists():
            raise BundleError(f"bundle folder {root} does not exist", path=str(root))
        manifest = read_manifest(root)
        bundle = cls(root=root, manifest=manifest)
        missing = [p for p in bundle.referenced_files() if not (root / p).is_file()]
        if missing:
            raise BundleError(f"bundle {root} is incomplete: missing {', '.join(sorted(set(missing)))}", path=str(root))
        checkpoint = manifest.torch_checkpoint
        present = [] if checkpoint is None or not (root / checkpoint).is_file() else [(checkpoint, "torch checkpoint")]
        for rel, role in [*bundle._roles(), *present]:
            path = root / rel
            problem = zip_problem(path) if role in _ZIP_ROLES else onnx_problem(path)
            if problem is not None:
                raise BundleError(f"bundle {root}: cannot load {role} {rel}: {problem}", path=str(path), role=role)
        return bundle

    def _roles(self) -> list[tuple[str, str]]:
        """Every file the manifest requires, with what it is."""
        m = self.manifest
        files = [(m.encoder.file, "encoder"), *dict.fromkeys((mode.tail, "tail") for mode in m.modes)]
        if m.baseline_model is not None:
            files.append((m.baseline_model, "baseline model"))
        if m.codec_tables is not None:
            files.append((m.codec_tables, "codec tables"))
        return files

    def referenced_files(self) -> list[str]:
        return [rel for rel, _role in self._roles()]

    def path(self, relative: str) -> Path:
        return self.root / relative

    @property
    def encoder_path(self) -> Path:
        return self.root / self.manifest.encoder.file

    def tail_path(self, mode: ModeSpec | str) -> Path:
        spec = self.manifest.mode(mode) if isinstance(mode, str) else mode
        return self.root / spec.tail

    @property
    def checkpoint_path(self) -> Path | None:
        ckpt = self.manifest.torch_checkpoint
        if ckpt is None:
            return None
        p = self.root / ckpt
        return p if p.is_file() else None


def default_bundle_path() -> Path:
    """The shipped default bundle (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "assets" / "default_bundle"


def default_samples_path() -> Path:
    """The shipped sample of rendered test images (uint8 NCHW + labels, ``.npz``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "samples.npz"
