"""Writing a benchmark's results: the JSON document, the plot beside it (same name, ``.png``), one summary line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def write_results(
    out: Path,
    benchmark: str,
    argv: Sequence[str] | None,
    fields: dict[str, Any],
    plot: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Write ``{"benchmark": ..., "command": ..., **fields}`` to ``out`` (folders created), call ``plot`` with
    ``out``'s ``.png`` sibling (unless ``None``), say what was written, and return the document.
    ``argv``: the arguments the script was given (``None``: the command line's)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    doc = {"benchmark": benchmark, "command": " ".join([f"bench/{benchmark}.py", *args]), **fields}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    if plot is not None:
        png = out.with_suffix(".png")
        plot(png)
        print(f"plot: {png}")
    print(f"wrote {out} ({len(doc.get('results', []))} rows, {doc.get('wall_seconds', 0.0):.0f} s)")
    return doc
