"""The repository reads the same on every machine: committed results record no absolute paths, and no source or
document names a folder of one machine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.results_io import recorded_args, recorded_path, recorded_text, write_results

ROOT = Path(__file__).resolve().parents[1]
# an absolute path: "/" that starts the string or follows a space, "(" or "=" (a URL's "//" follows ":")
ABSOLUTE = re.compile(r"(?:^|[\s(=])/[^\s/()]")
MACHINE_FOLDERS = ("/work/", "/root/")


def strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def checked_in_files() -> list[Path]:
    """Tracked files and new ones git does not ignore."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def test_the_absolute_path_pattern_finds_paths_and_leaves_urls() -> None:
    assert ABSOLUTE.search("/srv/build/x")
    assert ABSOLUTE.search("bundle v2 (/srv/build/slimsplit/assets/default_bundle)")
    assert ABSOLUTE.search("python bench/codec.py --features /tmp/f.npy")
    assert ABSOLUTE.search("--out=/tmp/x.json")
    assert not ABSOLUTE.search("https://github.com/OswaldHe/InTAR (benchmark/README.md)")
    assert not ABSOLUTE.search("bench/results/controller.json")
    assert not ABSOLUTE.search("../shared/traces/ATT-LTE-driving.up")


def test_committed_results_record_no_absolute_paths() -> None:
    files = sorted((ROOT / "bench" / "results").glob("*.json"))
    assert files
    found = [
        f"{f.name}: {s!r}"
        for f in files
        for s in strings(json.loads(f.read_text(encoding="utf-8")))
        if ABSOLUTE.search(s)
    ]
    assert not found, "absolute paths in committed results:\n" + "\n".join(found)


def test_results_record_paths_relative_to_the_repository() -> None:
    assert recorded_path(ROOT / "slimsplit" / "assets" / "default_bundle") == "slimsplit/assets/default_bundle"
    if ROOT.parent != Path(ROOT.anchor):  # a repository directly under "/" has no folder beside it to name
        assert recorded_path(ROOT.parent / "shared" / "traces" / "a.up") == "../shared/traces/a.up"
    assert recorded_path(ROOT / "bench" / ".." / "README.md") == "README.md"
    assert recorded_path(Path("/nowhere-else") / "features_w16.npy") == "features_w16.npy"
    for kept in ("bench/results/x.json", "shipped:ge-outages", "2mbit", "none"):
        assert recorded_path(kept) == kept
    args = ["--features", str(ROOT / "f.npy"), f"--out={ROOT}/o.json", "--seed", "3", "-k=x"]
    assert recorded_args(args) == ["--features", "f.npy", "--out=o.json", "--seed", "3", "-k=x"]


def test_log_lines_in_results_keep_no_absolute_paths() -> None:
    line = f"exit -11: #3 in {ROOT}/.venv-triton/lib/libtriton.so | #4 in /lib/x86_64-linux-gnu/libc.so.6 (at=/usr/x)"
    text = recorded_text(line)
    assert text == "exit -11: #3 in .venv-triton/lib/libtriton.so | #4 in libc.so.6 (at=x)"
    assert not ABSOLUTE.search(text) and recorded_text("no path 1/2 here") == "no path 1/2 here"


def test_write_results_records_the_command_without_absolute_paths(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    doc = write_results(out, "demo", ["--traces", str(ROOT / "x.up"), "--out", str(out)], {"results": []})
    assert doc["command"] == "python -m bench.demo --traces x.up --out demo.json"
    assert json.loads(out.read_text(encoding="utf-8"))["command"] == doc["command"]


def test_no_source_or_document_names_a_folder_of_one_machine() -> None:
    this = Path(__file__).resolve()
    found = []
    for path in checked_in_files():
        if path.resolve() == this:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if any(folder in line for folder in MACHINE_FOLDERS):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "machine paths:\n" + "\n".join(found)
