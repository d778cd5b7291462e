#!/usr/bin/env python3
"""Generate (or check) the Python gRPC stubs of ``protos/slimsplit/v1`` into ``slimsplit/v1``.

The stubs are committed (see ``protos/README.md`` for why). After editing a ``.proto`` file run::

    python tools/gen_protos.py            # regenerate slimsplit/v1/*_pb2*.py{,i}
    python tools/gen_protos.py --check    # exit 1 if the committed stubs differ from a fresh generation

Generation needs ``grpcio-tools`` at the version pinned in the ``dev`` extra: the generated code records the
protoc/grpc versions it came from, so a different grpcio-tools produces different (and differently-gated)
files.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("slimsplit") / "v1"
OUT_DIR = ROOT / PACKAGE
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = '"""Generated protobuf/gRPC stubs of ``protos/slimsplit/v1`` (do not edit; see tools/gen_protos.py)."""\n'


def proto_files() -> list[Path]:
    files = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PACKAGE}")
    return files


def generate(out_root: Path) -> dict[str, str]:
    """Run protoc (from grpcio-tools) into ``out_root``; return {file name: text} of the generated stubs."""
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("grpcio-tools is not installed: pip install -e '.[dev]'") from exc
    import importlib.resources

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    for proto in proto_files():
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            str(proto.relative_to(PROTO_ROOT)),
        ]
        # protoc resolves the proto path relative to an -I root; run it with paths relative to protos/.
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"protoc failed on {proto} (exit {rc})")
    gen_dir = out_root / PACKAGE
    files = {
        p.name: p.read_text(encoding="utf-8") for p in sorted(gen_dir.iterdir()) if p.name.endswith(GENERATED_SUFFIXES)
    }
    files["__init__.py"] = INIT_TEXT
    return files


def committed() -> dict[str, str]:
    if not OUT_DIR.is_dir():
        return {}
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(OUT_DIR.iterdir())
        if p.name.endswith(GENERATED_SUFFIXES) or p.name == "__init__.py"
    }


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    current = committed()
    stale = sorted(name for name in fresh.keys() | current.keys() if fresh.get(name) != current.get(name))
    if not stale:
        print(f"stubs in {PACKAGE} are fresh ({len(fresh)} files)")
        return 0
    for name in stale:
        diff = difflib.unified_diff(
            current.get(name, "").splitlines(keepends=True),
            fresh.get(name, "").splitlines(keepends=True),
            fromfile=f"committed/{name}",
            tofile=f"generated/{name}",
            n=1,
        )
        sys.stdout.writelines(list(diff)[:40])
    print(f"\nstale stubs in {PACKAGE}: {', '.join(stale)}; run: python tools/gen_protos.py", file=sys.stderr)
    return 1


def write() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in committed().keys() - fresh.keys():
        (OUT_DIR / name).unlink()
    for name, text in fresh.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
    print(f"wrote {', '.join(sorted(fresh))} to {PACKAGE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the committed stubs are stale")
    args = parser.parse_args(argv)
    return check() if args.check else write()


if __name__ == "__main__":
    sys.exit(main())
