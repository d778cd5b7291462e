"""The package layout: one path and one module name per file, a real wheel that holds each file once and imports
without the source tree, and an editable install that resolves every module to its one file."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import sysconfig
import zipfile
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("edge", "server", "apps")


def tracked_python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [ROOT / line for line in out.splitlines()]


def module_name(path: Path) -> str | None:
    """The module a product file is (``None`` for tests, bench, tools, setup.py)."""
    rel = path.relative_to(ROOT)
    parts = rel.parts
    if parts[0] in ROLES:
        assert parts[1] == "slimsplit" and parts[2] == parts[0], f"{rel}: a role folder holds slimsplit/<role>/ only"
        parts = parts[1:]
    elif parts[0] != "slimsplit":
        return None
    names = list(parts[:-1]) + ([] if parts[-1] == "__init__.py" else [parts[-1].removesuffix(".py")])
    return ".".join(names)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("slimsplit-*.whl")
    return built


def test_the_tree_has_no_symbolic_links() -> None:
    out = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    links = [line.split("\t", 1)[1] for line in out.splitlines() if line.startswith("120000")]
    assert links == []
    assert not (ROOT / "slimsplit" / "edge").exists() and not (ROOT / "slimsplit" / "server").exists()


def test_every_product_file_has_one_module_name_and_the_editable_install_finds_it() -> None:
    names = {path: module_name(path) for path in tracked_python_files()}
    product = {path: name for path, name in names.items() if name is not None and ".v1." not in f"{name}."}
    assert len(set(product.values())) == len(product), "two files claim one module name"
    for role in ("slimsplit.edge.cli", "slimsplit.server.core", "slimsplit.apps.demo", "slimsplit.codec.header"):
        assert role in product.values()
    for path, name in product.items():
        if name.startswith("slimsplit.server.backends.fpga.") or name.startswith("slimsplit.apps.loadtest.__main__"):
            continue  # importing these has no side effect to fear, but they are many: the roots below stand for them
        if name.count(".") > 2:
            continue
        module = importlib.import_module(name)
        assert Path(module.__file__ or "").resolve() == path.resolve(), name


def test_the_wheel_holds_each_file_once_and_every_role(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    counts = Counter(names)
    assert [n for n, c in counts.items() if c > 1] == []
    for module in tracked_python_files():
        name = module_name(module)
        if name is None:
            continue
        rel = "/".join(name.split(".")) + ("/__init__.py" if module.name == "__init__.py" else ".py")
        assert rel in counts, f"{module.relative_to(ROOT)} is not in the wheel as {rel}"
    assert not [n for n in names if n.startswith(("edge/", "server/", "apps/", "bench/", "tests/"))]
    assert "slimsplit/assets/default_bundle/manifest.json" in counts
    assert "slimsplit/assets/samples.npz" in counts


def test_the_wheel_imports_without_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    # No site processing (so no editable finder), the wheel first, then the dependencies of this environment.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])}
    code = (
        "import slimsplit.edge.cli, slimsplit.server.core, slimsplit.apps.demo, slimsplit.codec\n"
        "from slimsplit.bundle import Bundle, default_bundle_path\n"
        "import slimsplit.edge.cli as e, slimsplit.server.core as s\n"
        "Bundle.open(default_bundle_path())\n"
        "print(e.__file__); print(s.__file__); print(default_bundle_path())\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    )
    for line in done.stdout.splitlines():
        assert line.startswith(str(target)), line
