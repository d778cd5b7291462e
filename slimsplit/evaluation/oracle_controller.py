"""The ``oracle`` controller and the evaluation's controller registry (the live ones and ``oracle``).

``oracle`` replays a plan made with full knowledge of the link trace (:func:`~slimsplit.evaluation.oracle.plan_oracle`):
it is the upper bound of an offline evaluation and cannot run live. ``slimsplit-link simulate --controller oracle``
runs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from slimsplit.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.registry import CONTROLLERS, ControllerRegistry, ControllerSpec
from slimsplit.errors import ConfigError
from slimsplit.evaluation.oracle import plan_oracle
from slimsplit.link.shaping import LinkConfig
from slimsplit.settings import check


class OracleController(Controller):
    """Replays ``plan`` (one mode or ``None`` = skip per frame); frame ``i`` is the one captured at ``t0 + i /
    run.fps`` (evaluation only: the plan comes from the trace)."""

    name = "oracle"
    run: RunConfig

    def __init__(self, plan: Sequence[str | None], run: RunConfig, t0: float = 0.0) -> None:
        check(run.fps > 0, "fps", f"the oracle replays a plan per frame: expected a frame rate > 0, got {run.fps!r}")
        self.plan = list(plan)
        self.run = run
        self.fps = run.fps
        self.t0 = t0

    def choose(self, now: float, in_flight_bytes: int, in_flight_frames: int) -> Decision:
        i = round((now - self.t0) * self.fps)
        if not 0 <= i < len(self.plan):
            return Decision(None, "oracle: outside the planned run")
        mode = self.plan[i]
        return Decision(mode, "oracle" if mode is not None else "oracle: cannot make the deadline")

    def observe(self, feedback: FrameFeedback) -> None:
        return None


@dataclass(frozen=True)
class OracleOptions:
    """Options of the ``oracle``: ``link`` = the emulated link it plans over (required), ``n_frames`` = frames
    planned (required), ``reply_bytes`` = prediction size on the downlink, ``t0`` = capture time of frame 0."""

    link: LinkConfig | None = None
    n_frames: int | None = None
    reply_bytes: int = 64
    t0: float = 0.0

    def __post_init__(self) -> None:
        check(self.link is not None, "link", "the oracle plans from the trace: give the link it runs over")
        check(
            self.n_frames is not None and self.n_frames >= 0,
            "n_frames",
            f"the oracle plans a number of frames: expected an integer >= 0, got {self.n_frames!r}",
        )
        check(self.reply_bytes >= 0, "reply_bytes", f"expected an integer >= 0, got {self.reply_bytes!r}")
        check(math.isfinite(self.t0), "t0", f"expected a number, got {self.t0!r}")


def _oracle(modes: Sequence[ModeOption], run: RunConfig, options: OracleOptions, rtt_ms: float) -> Controller:
    if options.link is None or options.n_frames is None:  # pragma: no cover - refused by OracleOptions
        raise ConfigError("the oracle needs a link and a frame count")
    plan = plan_oracle(
        modes,
        run.deadline_ms,
        options.link,
        run.fps,
        options.n_frames,
        run.max_in_flight,
        reply_bytes=options.reply_bytes,
        t0=options.t0,
    )
    return OracleController(plan.modes, run, options.t0)


ORACLE = ControllerSpec(
    "oracle",
    OracleOptions,
    _oracle,
    "the best plan in hindsight: knows the link trace in advance (an upper bound; offline only)",
    live=False,
)
#: The live controllers and ``oracle``: what an offline evaluation (a simulation) can run.
EVALUATION_CONTROLLERS: ControllerRegistry = CONTROLLERS.extend(ORACLE)
#: Their names.
EVALUATION_CONTROLLER_NAMES = EVALUATION_CONTROLLERS.names()


def make_evaluation_controller(
    name: str,
    modes: Sequence[ModeOption],
    run: RunConfig,
    options: object = None,
    *,
    rtt_ms: float = 0.0,
    **values: object,
) -> Controller:
    """Build any controller of :data:`EVALUATION_CONTROLLERS` (see
    :meth:`~slimsplit.control.registry.ControllerRegistry.build`)."""
    return EVALUATION_CONTROLLERS.build(name, modes, run, options, rtt_ms=rtt_ms, **values)


__all__ = [
    "EVALUATION_CONTROLLERS",
    "EVALUATION_CONTROLLER_NAMES",
    "ORACLE",
    "OracleController",
    "OracleOptions",
    "make_evaluation_controller",
]
