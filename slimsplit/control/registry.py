"""Controllers by name: one registry, the one way to build a controller and the one list of names.

A :class:`ControllerSpec` says how to build one controller from the mode table, the run's
:class:`~slimsplit.control.config.RunConfig`, its options (a frozen dataclass) and the measured round trip.
:data:`CONTROLLERS` holds the live ones (``fixed``, ``ewma-greedy``, ``mpc``, and ``planes`` for frames sent as
bit planes); :data:`CONTROLLER_NAMES` is its
list of names; :func:`make_controller` builds one. Evaluation extends the registry with controllers that cannot
run live (:data:`slimsplit.evaluation.oracle_controller.EVALUATION_CONTROLLERS` adds ``oracle``, which plans from
the link trace itself)::

    run = RunConfig(deadline_ms=100, fps=30, max_in_flight=4)
    ctl = make_controller("mpc", modes, run, rtt_ms=20, margin=0.8)     # options by keyword ...
    ctl = make_controller("mpc", modes, run, MpcConfig(margin=0.8))     # ... or as the dataclass
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slimsplit.control.base import Controller, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import (
    EwmaGreedyController,
    EwmaGreedyOptions,
    FixedController,
    FixedOptions,
    MpcConfig,
    MpcController,
)
from slimsplit.control.planes import PlaneController, PlanesOptions
from slimsplit.errors import ConfigError

#: Builds a controller: (modes, run configuration, options, measured round trip in ms) -> controller.
Builder = Callable[[Sequence[ModeOption], RunConfig, Any, float], Controller]


@dataclass(frozen=True)
class ControllerSpec:
    """One controller of a registry. ``options``: the dataclass of its options (its fields are the option
    names); ``summary``: what it does, one phrase (help texts list it); ``measured``: it plans with the mode
    table's measured figures (accuracy, payload, latencies), so a bundle without them cannot drive it; ``live``:
    it can run on the device (``False``: it needs what only an evaluation knows, such as the link trace)."""

    name: str
    options: type[Any]
    build: Builder
    summary: str
    measured: bool = True
    live: bool = True

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))


class ControllerRegistry:
    """Controller specs by name (immutable: :meth:`extend` returns a new registry)."""

    def __init__(self, specs: Iterable[ControllerSpec]) -> None:
        self._specs: dict[str, ControllerSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ConfigError(f"controller {spec.name!r} is registered twice")
            self._specs[spec.name] = spec

    def names(self) -> tuple[str, ...]:
        """Every name, in registration order."""
        return tuple(self._specs)

    def live_names(self) -> tuple[str, ...]:
        """The names of the controllers that can run on the device."""
        return tuple(name for name, spec in self._specs.items() if spec.live)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[ControllerSpec]:
        return iter(self._specs.values())

    def spec(self, name: str) -> ControllerSpec:
        """The spec of ``name`` (:class:`ConfigError` naming the available ones otherwise)."""
        try:
            return self._specs[name]
        except KeyError:
            raise ConfigError(
                f"unknown controller {name!r}; available: {', '.join(self._specs)}", key="controller"
            ) from None

    def extend(self, *specs: ControllerSpec) -> ControllerRegistry:
        """This registry and ``specs`` (a name already here is an error)."""
        return ControllerRegistry((*self._specs.values(), *specs))

    def options(self, name: str, values: Mapping[str, Any] | None = None, base: Any = None) -> Any:
        """The options of controller ``name``: ``base`` (an instance of its options dataclass; default: the
        defaults) with ``values`` replaced. A key that is not one of its options is refused naming it and
        listing the valid ones; a bad value is refused naming the field."""
        spec = self.spec(name)
        if base is not None and not isinstance(base, spec.options):
            raise ConfigError(
                f"controller {name!r} takes {spec.options.__name__} options, not {type(base).__name__}",
                key="options",
            )
        values = dict(values or {})
        unknown = sorted(set(values) - set(spec.option_names()))
        if unknown:
            valid = ", ".join(spec.option_names()) or "none"
            raise ConfigError(
                f"controller {name!r} has no option {', '.join(repr(k) for k in unknown)}; valid: {valid}",
                key=unknown[0],
            )
        if base is None:
            return spec.options(**values)
        return dataclasses.replace(base, **values) if values else base

    def build(
        self,
        name: str,
        modes: Sequence[ModeOption],
        run: RunConfig,
        options: Any = None,
        *,
        rtt_ms: float = 0.0,
        **values: Any,
    ) -> Controller:
        """The controller ``name`` for ``modes`` and ``run``; ``options``: its options dataclass (or ``None`` for
        the defaults), ``values``: options by keyword (over ``options``); ``rtt_ms``: the round trip measured by
        the client, which adaptive controllers take out of their throughput samples (0 = unknown)."""
        spec = self.spec(name)
        return spec.build(modes, run, self.options(name, values, options), rtt_ms)


def _fixed(modes: Sequence[ModeOption], run: RunConfig, options: FixedOptions, rtt_ms: float) -> Controller:
    return FixedController(modes, run, options)


def _ewma_greedy(modes: Sequence[ModeOption], run: RunConfig, options: EwmaGreedyOptions, rtt_ms: float) -> Controller:
    return EwmaGreedyController(modes, run, options, rtt_ms)


def _mpc(modes: Sequence[ModeOption], run: RunConfig, options: MpcConfig, rtt_ms: float) -> Controller:
    return MpcController(modes, run, options, rtt_ms)


def _planes(modes: Sequence[ModeOption], run: RunConfig, options: PlanesOptions, rtt_ms: float) -> Controller:
    return PlaneController(modes, run, options, rtt_ms)


#: The live controllers.
CONTROLLERS = ControllerRegistry(
    (
        ControllerSpec("fixed", FixedOptions, _fixed, "always one mode", measured=False),
        ControllerSpec(
            "ewma-greedy",
            EwmaGreedyOptions,
            _ewma_greedy,
            "the published baseline: the most accurate mode that fits 0.8 x the deadline at the EWMA throughput",
        ),
        ControllerSpec(
            "mpc",
            MpcConfig,
            _mpc,
            "this project's model-predictive controller: risk-aware, over a queue model of the uplink",
        ),
        ControllerSpec(
            "planes",
            PlanesOptions,
            _planes,
            "progressive transmission (--transmission planes): the width whose expected bit planes give the best "
            "accuracy; the link decides the bits",
        ),
    )
)
#: Their names, in the order they are listed.
CONTROLLER_NAMES = CONTROLLERS.names()


def make_controller(
    name: str,
    modes: Sequence[ModeOption],
    run: RunConfig,
    options: Any = None,
    *,
    rtt_ms: float = 0.0,
    **values: Any,
) -> Controller:
    """Build the live controller ``name`` (see :meth:`ControllerRegistry.build`)."""
    return CONTROLLERS.build(name, modes, run, options, rtt_ms=rtt_ms, **values)


__all__ = [
    "CONTROLLERS",
    "CONTROLLER_NAMES",
    "Builder",
    "ControllerRegistry",
    "ControllerSpec",
    "make_controller",
]
