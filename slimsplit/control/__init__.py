"""Mode selection: the controller interface, throughput estimators, the controllers and the per-frame
control loop (in-flight accounting, the in-flight limit, frame records: :mod:`slimsplit.records`).

Per frame the edge calls ``ControlLoop.decide`` / ``sent`` / ``completed`` (or the :class:`Controller` methods
``choose`` / ``on_sent`` / ``observe`` directly); loop and controller are built for one :class:`RunConfig`, and
:func:`make_controller` builds ``fixed``, ``ewma-greedy`` or ``mpc`` by name (:data:`CONTROLLERS`; the evaluation's
registry adds ``oracle``).
"""

from slimsplit.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import (
    EwmaGreedyController,
    EwmaGreedyOptions,
    FixedController,
    FixedOptions,
    MpcConfig,
    MpcController,
)
from slimsplit.control.estimators import (
    EwmaEstimator,
    ThroughputEstimator,
    ThroughputSample,
    TransferSampler,
)
from slimsplit.control.loop import ControlLoop
from slimsplit.control.modes import modes_from_manifest, pareto_modes, rpi4_ensemble_modes
from slimsplit.control.registry import (
    CONTROLLER_NAMES,
    CONTROLLERS,
    ControllerRegistry,
    ControllerSpec,
    make_controller,
)

__all__ = [
    "CONTROLLERS",
    "CONTROLLER_NAMES",
    "ControlLoop",
    "Controller",
    "ControllerRegistry",
    "ControllerSpec",
    "Decision",
    "EwmaEstimator",
    "EwmaGreedyController",
    "EwmaGreedyOptions",
    "FixedController",
    "FixedOptions",
    "FrameFeedback",
    "ModeOption",
    "MpcConfig",
    "MpcController",
    "RunConfig",
    "ThroughputEstimator",
    "ThroughputSample",
    "TransferSampler",
    "make_controller",
    "modes_from_manifest",
    "pareto_modes",
    "rpi4_ensemble_modes",
]
