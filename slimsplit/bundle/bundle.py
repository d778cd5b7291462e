"""A bundle on disk: its folder, its manifest, and checked paths to its files.

Every file a bundle names (the manifest too) must resolve inside the bundle folder: a symlink (of the file or of a
folder on its way) that leads out of it is refused, so a bundle cannot make either side read or serve what lies
elsewhere on the machine.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from slimsplit.bundle import limits
from slimsplit.bundle.files import onnx_problem, zip_problem
from slimsplit.bundle.manifest import MANIFEST_NAME, Manifest, ModeSpec, read_manifest
from slimsplit.errors import BundleError

_ZIP_ROLES = ("torch checkpoint",)


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, root: Path | str) -> Bundle:
        """Open a bundle folder, validate its manifest, check that every file it names lies inside the folder (symlinks
        followed), exists and is whole (:mod:`slimsplit.bundle.files`; the torch checkpoint is optional, but checked
        when present), and that the codec tables are no larger than the manifest's modes allow
        (:mod:`slimsplit.bundle.limits`)."""
        root = Path(root)
        if not root.exists():
            raise BundleError(f"bundle folder {root} does not exist", path=str(root))
        _check_inside(root, MANIFEST_NAME, "manifest")
        manifest = read_manifest(root)
        bundle = cls(root=root, manifest=manifest)
        checkpoint = manifest.torch_checkpoint
        for rel, role in [*bundle._roles(), *([] if checkpoint is None else [(checkpoint, "torch checkpoint")])]:
            _check_inside(root, rel, role)
        missing = [p for p in bundle.referenced_files() if not (root / p).is_file()]
        if missing:
            raise BundleError(f"bundle {root} is incomplete: missing {', '.join(sorted(set(missing)))}", path=str(root))
        present = [] if checkpoint is None or not (root / checkpoint).is_file() else [(checkpoint, "torch checkpoint")]
        for rel, role in [*bundle._roles(), *present]:
            path = root / rel
            if role == "codec tables":
                problem = _tables_problem(path, manifest)
            else:
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


def _check_inside(root: Path, rel: str, role: str) -> None:
    """Refuse ``root / rel`` when it resolves (symlinks followed) outside ``root``."""
    path = root / rel
    try:
        base, target = root.resolve(), path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise BundleError(f"bundle {root}: cannot resolve {role} {rel}: {exc}", path=str(path), role=role) from None
    if not target.is_relative_to(base):
        raise BundleError(
            f"bundle {root}: {role} {rel} resolves to {target}, outside the bundle folder {base} "
            "(a symlink out of the bundle is not followed)",
            path=str(path),
            role=role,
        )


def _tables_problem(path: Path, manifest: Manifest) -> str | None:
    """Why the codec tables at ``path`` are not a whole zip archive or are larger (on disk, or uncompressed as the
    zip says) than tables for the manifest's modes can be, or None
    (:func:`slimsplit.bundle.limits.codec_tables_max_bytes`; each member's array header is checked where the tables
    are loaded, :func:`slimsplit.bundle.codec_tables.load_codec_tables`)."""
    cap = limits.codec_tables_max_bytes(m.width for m in manifest.modes)
    size = path.stat().st_size
    if size > cap:
        return f"the file is {size} bytes, more than the {cap} that tables for this manifest's modes take"
    if (problem := zip_problem(path)) is not None:
        return problem
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return f"not a complete zip archive ({exc})"
    unpacked = sum(m.file_size for m in members)
    if unpacked > cap:
        return f"its members unpack to {unpacked} bytes, more than the {cap} that tables for this manifest's modes take"
    return None


def default_bundle_path() -> Path:
    """The shipped default bundle (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "assets" / "default_bundle"


def default_samples_path() -> Path:
    """The shipped sample of rendered test images (uint8 NCHW + labels, ``.npz``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "samples.npz"
