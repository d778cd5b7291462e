"""The run configuration: what the control loop and the controller of one run must agree on.

One :class:`RunConfig` is made per run and handed to both the :class:`~slimsplit.control.loop.ControlLoop` (its
in-flight limit, the deadline of its records) and the controller (the ``mpc`` model plans with the same deadline,
frame rate and in-flight limit); the loop refuses a controller built for another one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from slimsplit.settings import check


@dataclass(frozen=True)
class RunConfig:
    """``deadline_ms``: the latency target of a frame, from its capture to its result (later = a miss).
    ``fps``: the capture rate, frames per second (0 = unpaced: the controller learns the spacing of its calls).
    ``max_in_flight``: frames sent and not yet answered (or given up) at most."""

    deadline_ms: float = 1000.0
    fps: float = 0.0
    max_in_flight: int = 4

    def __post_init__(self) -> None:
        check(
            isinstance(self.deadline_ms, int | float) and math.isfinite(self.deadline_ms) and self.deadline_ms > 0,
            "deadline_ms",
            f"expected a number > 0, got {self.deadline_ms!r}",
        )
        check(
            isinstance(self.fps, int | float) and math.isfinite(self.fps) and self.fps >= 0,
            "fps",
            f"expected a number >= 0, got {self.fps!r}",
        )
        check(
            isinstance(self.max_in_flight, int)
            and not isinstance(self.max_in_flight, bool)
            and self.max_in_flight >= 1,
            "max_in_flight",
            f"expected an integer >= 1, got {self.max_in_flight!r}",
        )

    @property
    def deadline_s(self) -> float:
        return self.deadline_ms / 1000.0

    def differences(self, other: RunConfig) -> tuple[str, ...]:
        """The fields whose values differ from ``other``'s."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name))


__all__ = ["RunConfig"]
