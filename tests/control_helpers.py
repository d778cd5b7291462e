"""Controllers for tests that need the mode fixed without a mode table or a run configuration."""

from __future__ import annotations

from slimsplit.control.base import Controller, Decision, FrameFeedback


class FixedMode(Controller):
    """Always ``mode``; learns nothing."""

    name = "fixed-test"

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        return Decision(self.mode, "fixed")

    def observe(self, feedback: FrameFeedback) -> None:
        return None
