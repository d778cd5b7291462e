"""Finding bundles on disk: a model repository (``<dir>/<model>/<version>/manifest.json``) or bundle folders.

A path given to the server may be

* a bundle folder (it holds ``manifest.json``),
* a folder of bundle folders (``<dir>/<bundle>/manifest.json``), or
* a model repository (``<dir>/<model>/<version>/manifest.json``), as in Triton/KServe.

A bundle is served under the name and version in its manifest; in a repository the folder names must agree
with them (a mismatch is a :class:`~slimsplit.errors.BundleError` naming both), so what a client asks for is
what the manifest says. Every bundle one server serves together fits one ``Describe`` answer: their manifests (each
sent whole) stay under :data:`slimsplit.bundle.limits.MAX_SERVED_MANIFESTS_BYTES` in all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from slimsplit.bundle import MANIFEST_NAME, Bundle, limits
from slimsplit.errors import BundleError


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for versions: numeric parts compare as numbers ("10" > "9", "1.2.10" > "1.2.9")."""
    parts = re.split(r"[.\-+_]", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def _is_bundle(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def discover(path: Path | str) -> list[Bundle]:
    """Open every bundle under ``path`` (see the module docstring for the layouts)."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"model path {root} does not exist", path=str(root))
    if not root.is_dir():
        raise BundleError(f"model path {root} is not a folder", path=str(root))
    if _is_bundle(root):
        return [Bundle.open(root)]
    bundles: list[Bundle] = []
    for child in _subdirs(root):
        if _is_bundle(child):
            bundles.append(Bundle.open(child))
            continue
        for version_dir in _subdirs(child):
            if not _is_bundle(version_dir):
                continue
            bundle = Bundle.open(version_dir)
            m = bundle.manifest
            if (m.name, m.version) != (child.name, version_dir.name):
                raise BundleError(
                    f"{version_dir}: the repository folders say model {child.name!r} version "
                    f"{version_dir.name!r} but its manifest says {m.name!r} version {m.version!r}; "
                    f"rename the folders to {m.name}/{m.version}",
                    path=str(version_dir),
                )
            bundles.append(bundle)
    if not bundles:
        raise BundleError(
            f"no bundle found under {root}: expected {root}/{MANIFEST_NAME}, "
            f"{root}/<bundle>/{MANIFEST_NAME} or {root}/<model>/<version>/{MANIFEST_NAME}",
            path=str(root),
        )
    return bundles


def discover_all(paths: Iterable[Path | str]) -> list[Bundle]:
    """Bundles under every path; two bundles with the same name and version are an error, and so are bundles
    whose manifests together are too large for one ``Describe`` answer."""
    seen: dict[tuple[str, str], Path] = {}
    out: list[Bundle] = []
    served = 0
    for path in paths:
        for bundle in discover(path):
            key = (bundle.manifest.name, bundle.manifest.version)
            if key in seen:
                raise BundleError(
                    f"model {key[0]!r} version {key[1]!r} is in both {seen[key]} and {bundle.root}",
                    path=str(bundle.root),
                )
            seen[key] = bundle.root
            out.append(bundle)
            served += len(bundle.manifest.to_json().encode("utf-8"))
            if served > limits.MAX_SERVED_MANIFESTS_BYTES:
                raise BundleError(
                    f"{bundle.root}: with this bundle the manifests served together are {served} bytes, more than "
                    f"the {limits.MAX_SERVED_MANIFESTS_BYTES} that one Describe answer carries; serve fewer models "
                    "per server",
                    path=str(bundle.root),
                    limit=limits.MAX_SERVED_MANIFESTS_BYTES,
                )
    return out


def newest(versions: Sequence[str]) -> str:
    return max(versions, key=version_key)
