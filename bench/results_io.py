"""Writing a benchmark's results: the JSON document, the plot beside it (same name, ``.png``), one summary line.

Paths in results are recorded the same on every machine (:func:`recorded_path`, :func:`recorded_args`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]


def recorded_path(path: str | os.PathLike[str]) -> str:
    """``path`` as results record it: an absolute path inside the repository, or inside the ``shared/`` folder
    beside it (``../shared/traces``), becomes relative to the repository; any other absolute path is reduced to its
    file name (its folder exists on one machine only). Relative paths and specs (``shipped:NAME``, ``2mbit``) are
    kept as given."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    absolute = Path(os.path.normpath(text))
    for candidate in (absolute, absolute.resolve()):
        for base, prefix in ((REPOSITORY, Path(".")), (REPOSITORY.parent / "shared", Path("..") / "shared")):
            if candidate.is_relative_to(base) and base != Path(base.anchor):  # never relative to "/"
                return (prefix / candidate.relative_to(base)).as_posix()
    return absolute.name


_PATH_IN_TEXT = re.compile(r"(?<![^\s(=])/[^\s()]+")


def recorded_text(text: str) -> str:
    """``text`` (a log line) with every absolute path in it as :func:`recorded_path` records it."""
    return _PATH_IN_TEXT.sub(lambda m: recorded_path(m.group(0)), text)


def recorded_args(argv: Sequence[str]) -> list[str]:
    """A command line's arguments as results record them: each absolute path (also in ``--flag=PATH``) through
    :func:`recorded_path`."""
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        if arg.startswith("-") and eq and os.path.isabs(value):
            out.append(f"{flag}={recorded_path(value)}")
        else:
            out.append(recorded_path(arg) if os.path.isabs(arg) else arg)
    return out


def write_results(
    out: Path,
    benchmark: str,
    argv: Sequence[str] | None,
    fields: dict[str, Any],
    plot: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Write ``{"benchmark": ..., "command": ..., **fields}`` to ``out`` (folders created), call ``plot`` with
    ``out``'s ``.png`` sibling (unless ``None``), say what was written, and return the document.
    ``argv``: the arguments the script was given (``None``: the command line's), recorded by :func:`recorded_args`."""
    args = recorded_args(argv if argv is not None else sys.argv[1:])
    doc = {"benchmark": benchmark, "command": " ".join([f"python -m bench.{benchmark}", *args]), **fields}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    if plot is not None:
        png = out.with_suffix(".png")
        plot(png)
        print(f"plot: {png}")
    print(f"wrote {out} ({len(doc.get('results', []))} rows, {doc.get('wall_seconds', 0.0):.0f} s)")
    return doc
