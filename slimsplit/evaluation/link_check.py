"""What an emulated link allowed during a run: per frame, could *some* mode, sent alone on the link from the
frame's capture, have been answered within its deadline?

On a trace-driven link a run's misses have two kinds of cause: the link itself (an outage or a deep fade during
which no mode arrives in time, whatever the edge does) and the edge's choices (a mode too heavy for the moment,
or a queue of its own earlier frames). This module separates them after a live run, with the same link model as
the simulator and the oracle (:func:`~slimsplit.evaluation.oracle.feasible_at`) evaluated at each
frame's real capture time, so a summary can say how the controller did on the frames the link allowed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from slimsplit.control.base import ModeOption
from slimsplit.evaluation.oracle import feasible_at
from slimsplit.link.shaping import LinkConfig
from slimsplit.records import FrameRecord


@dataclass(frozen=True)
class LinkCheck:
    """``frames``: frames with a capture time and a deadline; ``allowed``: those the link allowed (some mode alone
    in time); ``hits``: frames answered in time; ``hits_allowed``: of those, the ones the link allowed."""

    frames: int
    allowed: int
    hits: int
    hits_allowed: int

    @property
    def hit_rate_allowed(self) -> float | None:
        """In-time frames among the frames the link allowed (``None`` when it allowed none)."""
        return self.hits_allowed / self.allowed if self.allowed else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate_allowed": self.hit_rate_allowed}


def check_link(
    results: Sequence[FrameRecord],
    modes: Sequence[ModeOption],
    link: LinkConfig,
    usable: Collection[str] = (),
) -> LinkCheck | None:
    """The :class:`LinkCheck` of a run's ``results`` over ``link`` with the mode table ``modes`` (what a frame
    of each mode puts on the link), restricted to the names in ``usable`` (the modes the run could send; empty =
    all); ``None`` when no frame has both a capture time and a deadline, or no mode is left."""
    if usable:
        modes = [m for m in modes if m.name in usable]
    timed = [(r, d) for r in results if (d := r.deadline_ms) is not None and math.isfinite(r.t_s)]
    if not timed or not modes:
        return None
    allowed = feasible_at(modes, [d for _, d in timed], link, [r.t_s for r, _ in timed])
    hits = np.asarray([bool(r.hit) for r, _ in timed], dtype=bool)
    return LinkCheck(
        frames=len(timed),
        allowed=int(allowed.sum()),
        hits=int(hits.sum()),
        hits_allowed=int((hits & allowed).sum()),
    )


def format_link_check(check: LinkCheck) -> str:
    """Summary lines in the style of :func:`~slimsplit.edge.display.format_summary`."""
    blocked = check.frames - check.allowed
    lines = [
        f"  link check   the link allowed {check.allowed} of {check.frames} frames in time in some mode "
        f"(each frame alone on it); {blocked} fell in outages or fades no mode could beat"
    ]
    rate = check.hit_rate_allowed
    if rate is not None:
        lines.append(
            f"               in time: {check.hits_allowed} of those {check.allowed} ({rate * 100:.1f} %)"
            f"{'' if check.hits == check.hits_allowed else f', and {check.hits - check.hits_allowed} more'}"
        )
    return "\n".join(lines)


__all__ = ["LinkCheck", "check_link", "format_link_check"]
