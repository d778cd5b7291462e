"""Mode selection on the edge: the controller interface, throughput estimators, the controllers and the per-frame
control loop (in-flight accounting, the in-flight limit, frame records).

Per frame the edge calls ``ControlLoop.decide`` / ``sent`` / ``completed`` (or the :class:`Controller` methods
``choose`` / ``on_sent`` / ``observe`` directly); :func:`make_controller` builds ``fixed``, ``ewma-greedy``,
``mpc`` or ``oracle`` by name.
"""

from slimsplit.edge.control.base import Controller, Decision, FrameFeedback, ModeOption
from slimsplit.edge.control.controllers import (
    CONTROLLER_NAMES,
    EwmaGreedyController,
    FixedController,
    MpcConfig,
    MpcController,
    OracleController,
    make_controller,
)
from slimsplit.edge.control.estimators import (
    EwmaEstimator,
    RobustHarmonicEstimator,
    ThroughputEstimator,
    ThroughputSample,
    TransferSampler,
)
from slimsplit.edge.control.loop import ControlLoop, FrameRecord
from slimsplit.edge.control.modes import modes_from_manifest, pareto_modes, rpi4_ensemble_modes

__all__ = [
    "CONTROLLER_NAMES",
    "ControlLoop",
    "Controller",
    "Decision",
    "EwmaEstimator",
    "EwmaGreedyController",
    "FixedController",
    "FrameFeedback",
    "FrameRecord",
    "ModeOption",
    "MpcConfig",
    "MpcController",
    "OracleController",
    "RobustHarmonicEstimator",
    "ThroughputEstimator",
    "ThroughputSample",
    "TransferSampler",
    "make_controller",
    "modes_from_manifest",
    "pareto_modes",
    "rpi4_ensemble_modes",
]
