"""Controllers: fixed, ewma-greedy (published rule), mpc (collapse, skip, in-flight limit, recovery), oracle; the
registry, the options and the run configuration they share with the control loop."""

from __future__ import annotations

import numpy as np
import pytest

from slimsplit.bundle import Manifest, read_manifest
from slimsplit.control.base import FrameFeedback, ModeOption
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import (
    EwmaGreedyController,
    EwmaGreedyOptions,
    FixedController,
    FixedOptions,
    MpcConfig,
    MpcController,
)
from slimsplit.control.loop import ControlLoop
from slimsplit.control.modes import modes_from_manifest, pareto_modes, rpi4_ensemble_modes
from slimsplit.control.registry import CONTROLLER_NAMES, CONTROLLERS, make_controller
from slimsplit.errors import ConfigError, UnknownMode
from slimsplit.evaluation.oracle import plan_oracle
from slimsplit.evaluation.oracle_controller import (
    EVALUATION_CONTROLLER_NAMES,
    OracleController,
    make_evaluation_controller,
)
from slimsplit.evaluation.sim import SimConfig, figures, simulate
from slimsplit.link.shaping import LinkConfig
from slimsplit.link.synth import PiecewiseModel, gilbert_elliott
from slimsplit.link.trace import Trace

A = ModeOption("A", 16, 8, 0.90, 10000.0, 10.0, 0.0)
B = ModeOption("B", 8, 4, 0.80, 2000.0, 5.0, 0.0)
C = ModeOption("C", 2, 1, 0.70, 500.0, 2.0, 0.0)
ABC = [A, B, C]
R100 = RunConfig(deadline_ms=100)  # a 100 ms deadline, unpaced, 4 frames in flight
R30 = RunConfig(deadline_ms=100, fps=30)


def feed(ctl: MpcController | EwmaGreedyController, bps: float, n: int = 10, start: int = 0) -> None:
    """Completed frames of 10 kB that each measured ``bps`` on an idle link (no rtt, no server time)."""
    t = 100.0 * start
    for i in range(start, start + n):
        dur = 8 * 10000 / bps
        ctl.observe(FrameFeedback(i, "A", 10000, t, t + dur, 0.0))
        t += dur + 1.0


def test_fixed() -> None:
    ctl = FixedController(ABC, R100)
    assert ctl.choose(0, 0, 0).mode == "A"  # default: most accurate
    assert FixedController(ABC, R100, FixedOptions("C")).choose(0, 0, 0).mode == "C"
    d = ctl.choose(0, 0, 4)
    assert d.mode is None and "in-flight limit" in d.reason
    with pytest.raises(UnknownMode, match=r"^mode: .*'Z'"):
        FixedController(ABC, R100, FixedOptions("Z"))


def test_ewma_greedy_follows_the_published_rule() -> None:
    ctl = EwmaGreedyController(ABC, R100)
    assert ctl.choose(0, 0, 0).mode == "C"  # no estimate yet: lightest
    feed(ctl, 1e6)
    # budget 80 ms: A needs 10 + 80 = 90 ms, B needs 5 + 16 = 21 ms
    d = ctl.choose(0, 0, 0)
    assert d.mode == "B" and d.estimate_bps == pytest.approx(1e6)
    feed(ctl, 10e6, n=30, start=10)
    assert ctl.choose(0, 0, 0).mode == "A"
    feed(ctl, 1e4, n=30, start=40)
    d = ctl.choose(0, 0, 0)
    assert d.mode == "C" and "nothing fits" in d.reason
    assert ctl.choose(0, 0, 4).mode is None


def test_mpc_picks_by_prediction_and_respects_the_queue() -> None:
    ctl = MpcController(ABC, R30, MpcConfig(packet_bytes=0, switch_penalty=0))
    assert ctl.choose(0.0, 0, 0).mode == "C"  # no sample yet
    feed(ctl, 20e6)
    idle = ctl.choose(1000.0, 0, 0)
    # 10 ms encoder + 10 kB at 20 Mbit/s (rates sit on a 2% grid: the transfer part may move by 1%)
    assert idle.mode == "A" and idle.predicted_ms == pytest.approx(14.0, abs=0.05)
    # 60 kB still queued ahead: 24 ms to drain before A's bytes can go
    ctl.on_sent(500, "A", 60000, 1000.0)
    queued = ctl.choose(1000.0, 60000, 1)
    assert queued.mode == "A" and queued.predicted_ms == pytest.approx(28.0, rel=0.011)
    # 300 kB ahead (120 ms): nothing can make a 100 ms deadline behind it
    ctl.on_sent(501, "A", 240000, 1000.0)
    assert ctl.choose(1000.0, 300000, 2).mode is None


@pytest.mark.parametrize("expiry", ["reply", "sent"])
def test_mpc_picks_a_cheaper_mode_when_the_link_collapses(expiry: str) -> None:
    """A steady 0.15 Mbit/s stretch between 2 Mbit/s ones. Under ``sent`` (the live client: a frame's slot is freed
    at its deadline, its bytes stay queued) a controller that keeps sending frames it expects to be late builds a
    backlog longer than the deadline, after which no reply comes back in time and it is blind."""
    modes = [
        ModeOption("hi", 16, 8, 0.91, 4000.0, 1.0, 1.0),
        ModeOption("mid", 8, 4, 0.88, 1000.0, 1.0, 1.0),
        ModeOption("lo", 2, 1, 0.75, 100.0, 1.0, 1.0),
    ]
    trace = PiecewiseModel(((10.0, 2e6), (10.0, 0.15e6), (10.0, 2e6))).trace()
    link = LinkConfig(uplink=trace, delay_ms=10.0)
    cfg = SimConfig(fps=30, deadline_ms=100, duration_s=30.0, max_in_flight=8, expiry=expiry)
    ctl = make_controller("mpc", modes, cfg.run, rtt_ms=20)
    res = simulate(ctl, modes, link, cfg)
    size = {m.name: m.payload_bytes for m in modes}

    def mean_payload(t0: float, t1: float) -> float:
        xs = [size[r.mode] for r in res.records if r.sent and t0 <= r.t_s < t1]
        return float(np.mean(xs))

    good, bad, again = mean_payload(3, 10), mean_payload(13, 20), mean_payload(23, 30)
    assert bad < good / 3, (good, bad)
    assert again > 3 * bad, (bad, again)  # recovers when capacity returns
    plan = plan_oracle(modes, 100, link, 30, cfg.n_frames, 8)
    window = [i for i, r in enumerate(res.records) if 13 <= r.t_s < 20]
    mpc_hits = sum(bool(res.records[i].hit) for i in window)
    oracle_hits = sum(bool(plan.feasible[i]) for i in window)
    assert mpc_hits >= 0.9 * oracle_hits  # it keeps delivering in the collapse, with the cheap mode


def test_mpc_skips_when_nothing_can_make_it() -> None:
    ctl = MpcController(ABC, RunConfig(deadline_ms=100, fps=30, max_in_flight=8))
    feed(ctl, 50e3)  # 50 kbit/s
    for i in range(3):
        ctl.on_sent(900 + i, "C", 500, 999.0)  # three frames stuck for a second: the link is stalled
    d = ctl.choose(1000.0, 1500, 3)
    assert d.mode is None
    assert "no mode is worth sending" in d.reason and "B in flight" in d.reason


def test_mpc_probes_an_idle_link_instead_of_skipping_forever() -> None:
    ctl = MpcController(ABC, R30)
    feed(ctl, 1e3)  # a hopeless estimate
    d = ctl.choose(1000.0, 0, 0)
    assert d.mode == "C" and d.reason.startswith("probe")


def test_mpc_never_exceeds_the_in_flight_limit_and_recovers_after_an_outage() -> None:
    modes = [
        ModeOption("hi", 16, 8, 0.91, 1000.0, 1.0, 1.0),
        ModeOption("lo", 2, 1, 0.75, 60.0, 1.0, 1.0),
    ]
    trace = PiecewiseModel(((5.0, 1e6), (3.0, 0.0), (5.0, 1e6))).trace()
    link = LinkConfig(uplink=trace, delay_ms=10.0)
    cfg = SimConfig(fps=30, deadline_ms=100, duration_s=13.0, max_in_flight=4)
    loop_k = cfg.max_in_flight
    res = simulate(make_controller("mpc", modes, cfg.run, rtt_ms=20), modes, link, cfg)
    sent = [r for r in res.records if r.sent]
    for r in res.records:
        t = r.t_s
        assert sum(1 for s in sent if s.t_s <= t and s.t_s + s.latency_ms / 1e3 > t) <= loop_k
    during = [r for r in res.records if 5.3 <= r.t_s < 8.0]
    assert sum(r.sent for r in during) <= loop_k + 2  # no unbounded queueing into the outage
    after = [bool(r.hit) for r in res.records if 9.0 <= r.t_s < 13.0]
    assert np.mean(after) > 0.95


def test_make_controller_registry_and_errors() -> None:
    assert CONTROLLER_NAMES == CONTROLLERS.names() == ("fixed", "ewma-greedy", "mpc", "planes")
    assert (*CONTROLLER_NAMES, "oracle") == EVALUATION_CONTROLLER_NAMES  # evaluation extends the live registry
    assert make_controller("mpc", ABC, R100, horizon=3).name == "mpc"
    built = make_controller("mpc", ABC, R100, MpcConfig(margin=0.8), horizon=3)  # keywords over the dataclass
    assert isinstance(built, MpcController) and built.config == MpcConfig(margin=0.8, horizon=3)
    with pytest.raises(ConfigError, match="unknown controller 'pid'; available: fixed, ewma-greedy, mpc"):
        make_controller("pid", ABC, R100)
    with pytest.raises(ConfigError, match="unknown controller 'oracle'"):
        make_controller("oracle", ABC, R100)  # not a live controller
    with pytest.raises(ConfigError, match="controller 'mpc' has no option 'alpha'; valid: samples, sample_span"):
        make_controller("mpc", ABC, R100, alpha=0.3)
    with pytest.raises(ConfigError, match="takes MpcConfig options, not EwmaGreedyOptions"):
        make_controller("mpc", ABC, R100, EwmaGreedyOptions())
    with pytest.raises(ConfigError, match=r"^link: the oracle plans from the trace"):
        make_evaluation_controller("oracle", ABC, R30)
    with pytest.raises(ConfigError, match=r"^fps: "):
        OracleController(["A"], R100)  # a plan per frame needs a frame rate
    with pytest.raises(ConfigError, match=r"^rtt_ms: expected a number >= 0"):
        make_controller("mpc", ABC, R100, rtt_ms=-1)
    with pytest.raises(ConfigError):
        MpcConfig(margin=0)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: MpcConfig(margin=0), "margin"),
        (lambda: MpcConfig(samples=0), "samples"),
        (lambda: MpcConfig(stall_fraction=1.5), "stall_fraction"),
        (lambda: MpcConfig(outage_after=-1.0), "outage_after"),
        (lambda: MpcConfig(late_penalty=-1.0), "late_penalty"),
        (lambda: MpcConfig(time_tolerance=1.0), "time_tolerance"),
        (lambda: EwmaGreedyOptions(alpha=0.0), "alpha"),
        (lambda: EwmaGreedyOptions(budget_fraction=-1.0), "budget_fraction"),
        (lambda: EwmaGreedyOptions(initial_bps=0.0), "initial_bps"),
        (lambda: FixedOptions(""), "mode"),
        (lambda: RunConfig(deadline_ms=0), "deadline_ms"),
        (lambda: RunConfig(deadline_ms=float("inf")), "deadline_ms"),
        (lambda: RunConfig(fps=-1.0), "fps"),
        (lambda: RunConfig(max_in_flight=0), "max_in_flight"),
    ],
)
def test_option_and_run_config_errors_name_the_field(build: object, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: expected ") as caught:
        build()  # type: ignore[operator]
    assert caught.value.context["key"] == field


def test_the_control_loop_refuses_a_controller_built_for_another_run() -> None:
    """One run configuration feeds both: a loop and a controller that disagree fail at once, naming the field."""
    ctl = make_controller("mpc", ABC, RunConfig(deadline_ms=100, fps=30, max_in_flight=8))
    with pytest.raises(ConfigError, match=r"^max_in_flight: controller 'mpc' was built for 8, the control loop runs"):
        ControlLoop(ctl, ABC, RunConfig(deadline_ms=100, fps=30, max_in_flight=4))
    with pytest.raises(ConfigError, match=r"^fps: "):
        simulate(ctl, ABC, LinkConfig(uplink=Trace.constant(1e6)), SimConfig(fps=10, deadline_ms=100, max_in_flight=8))
    assert ControlLoop(ctl, ABC, RunConfig(deadline_ms=100.0, fps=30.0, max_in_flight=8)).max_in_flight == 8
    mpc = MpcController(ABC, RunConfig(deadline_ms=100, fps=30, max_in_flight=1))
    assert mpc.run.max_in_flight == 1 and mpc.choose(0.0, 0, 1).mode is None  # the mpc model reads the limit


def test_oracle_is_an_upper_bound_and_replays_exactly() -> None:
    modes = [
        ModeOption("hi", 16, 8, 0.91, 3000.0, 2.0, 1.0),
        ModeOption("mid", 8, 4, 0.88, 800.0, 1.0, 1.0),
        ModeOption("lo", 2, 1, 0.75, 80.0, 0.5, 1.0),
    ]
    trace = gilbert_elliott(1.5e6, 0.2e6, 3.0, 2.0, outage_s=0.8, p_outage=0.5, duration_s=40.0, seed=4).trace()
    link = LinkConfig(uplink=trace, delay_ms=10.0)
    cfg = SimConfig(fps=30, deadline_ms=100, duration_s=40.0, max_in_flight=8)
    plan = plan_oracle(modes, 100, link, 30, cfg.n_frames, 8)
    oracle_ctl = make_evaluation_controller("oracle", modes, cfg.run, link=link, n_frames=cfg.n_frames)
    oracle = simulate(oracle_ctl, modes, link, cfg)
    assert [r.mode or None for r in oracle.records] == list(plan.modes)  # a skipped frame has no mode
    assert [r.hit for r in oracle.records] == list(plan.feasible)  # the sim reproduces the plan exactly
    so = figures(oracle.records, modes, plan.feasible, plan.hits)
    assert so["feasible_hit_rate"] == 1.0
    for name in CONTROLLER_NAMES:
        res = simulate(make_controller(name, modes, cfg.run, rtt_ms=20), modes, link, cfg)
        s = figures(res.records, modes, plan.feasible, plan.hits)
        assert s["hits"] <= plan.hits, name
        if s["hits"] == plan.hits:
            assert s["mean_accuracy"] <= so["mean_accuracy"] + 1e-9


def test_oracle_refuses_an_encoder_slower_than_the_frame_period() -> None:
    slow = [ModeOption("s", 1, 1, 0.5, 100.0, 50.0, 0.0)]
    with pytest.raises(ConfigError, match="encoder"):
        plan_oracle(slow, 100, LinkConfig(uplink=Trace.constant(1e6)), 30, 10)


def test_control_loop_accounting() -> None:
    run = RunConfig(deadline_ms=100, max_in_flight=2)
    loop = ControlLoop(FixedController(ABC, run, FixedOptions("B")), ABC, run)
    assert loop.decide(0, 0.0).mode == "B"
    assert loop.in_flight_bytes == 2000 and loop.in_flight_frames == 1
    loop.sent(0, 1900, 0.005)
    assert loop.in_flight_bytes == 1900
    loop.decide(1, 0.033)
    d = loop.decide(2, 0.066)
    assert d.mode is None and "in-flight limit" in d.reason
    rec = loop.completed(0, 0.090, 3.0)
    assert rec.hit and rec.latency_ms == pytest.approx(90.0) and rec.rtt_ms == pytest.approx(85.0)
    assert rec.server_ms == 3.0 and rec.sent_s == 0.005 and rec.payload_bytes == 1900 and rec.mode == "B"
    assert loop.in_flight_frames == 1 and loop.in_flight_bytes == 2000
    assert [r.frame_id for r in loop.records] == [0, 2]  # frame 1 is still in flight
    assert loop.records[1].skipped and loop.records[1].status == "SKIPPED" and loop.records[1].t_s == 0.066
    late = loop.completed(1, 0.2, 0.0, ok=False)
    assert late.status == "DEADLINE_EXCEEDED" and late.hit is False and late.server is None
    assert [r.frame_id for r in loop.records] == [0, 1, 2]  # in the order of the decisions


def test_rpi4_table_reproduces_the_published_points_and_fills_the_grid() -> None:
    modes = {m.name: m for m in rpi4_ensemble_modes()}
    assert len(modes) == 16
    assert modes["11"].accuracy == pytest.approx(0.145) and modes["11"].payload_bytes == 6912
    assert modes["14"].accuracy == pytest.approx(0.343) and modes["14"].payload_bytes == 27648
    assert modes["44"].encoder_ms == 263 and modes["44"].accuracy == pytest.approx(0.368)
    # interpolated: one member linear in bits; more members get the same bit-depth penalty
    assert modes["12"].accuracy == pytest.approx((14.5 + 19.8 / 3) / 100)
    assert modes["22"].accuracy == pytest.approx((36.1 - 19.8 * 2 / 3) / 100)
    assert all(m.encoder_ms == modes[f"{m.width}4"].encoder_ms for m in modes.values())


def test_pareto_modes_drop_dominated_ones() -> None:
    worse = ModeOption("W", 8, 8, 0.79, 2500.0, 6.0, 0.0)  # less accurate than B, more bytes and time
    names = [m.name for m in pareto_modes([*ABC, worse])]
    assert names == ["A", "B", "C"]


def test_modes_from_manifest(tmp_path: object) -> None:
    from slimsplit.bundle import default_bundle_path

    path = default_bundle_path()
    if not (path / "manifest.json").is_file():
        pytest.skip("no default bundle in this checkout")
    manifest: Manifest = read_manifest(path)
    modes = modes_from_manifest(manifest, server_overhead_ms=1.0)
    assert [m.name for m in modes] == list(manifest.mode_names)
    spec = manifest.modes[0]
    assert modes[0].payload_bytes == spec.payload_bytes_mean
    assert modes[0].server_ms == pytest.approx((spec.tail_ms_p50 or 0.0) + 1.0)


def _mpc_run(modes: list[ModeOption], fps: float, deadline_ms: float, k: int, **opts: object) -> list[str | None]:
    trace = gilbert_elliott(good_bps=1.5e6, bad_bps=0.3e6, outage_s=1.0, p_outage=0.3, duration_s=60.0, seed=3)
    link = LinkConfig(uplink=trace.trace(), delay_ms=10.0)
    cfg = SimConfig(fps=fps, deadline_ms=deadline_ms, duration_s=60.0, max_in_flight=k, expiry="captured")
    ctl = make_controller("mpc", modes, cfg.run, rtt_ms=20, **opts)
    return [r.mode for r in simulate(ctl, modes, link, cfg).records]


SETUPS = [  # (modes, fps, deadline, in flight): a bundle-like table at 30 fps, the Raspberry Pi table one at a time
    pytest.param(
        [
            ModeOption("hi", 16, 8, 0.91, 4000.0, 3.0, 1.0),
            ModeOption("mid", 8, 4, 0.88, 1000.0, 2.0, 1.0),
            ModeOption("lo", 2, 1, 0.75, 100.0, 1.0, 1.0),
        ],
        30.0,
        100.0,
        8,
        id="30fps",
    ),
    pytest.param(rpi4_ensemble_modes(), 1000.0 / 300, 300.0, 1, id="rpi4-300ms"),
]


@pytest.mark.parametrize(("modes", "fps", "deadline_ms", "k"), SETUPS)
def test_mpc_shortcuts_decide_exactly_as_the_full_evaluation(
    modes: list[ModeOption], fps: float, deadline_ms: float, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision's shortcuts change its cost, not its choices: tables built at construction or on first use,
    and the idle-link sums taken over all scenarios at once or scenario by scenario (forced by making every table
    look busy), give the same mode for every frame of a minute with outages."""
    default = _mpc_run(modes, fps, deadline_ms, k)
    assert len(set(default) - {None}) >= 2  # the run exercises the choice
    assert _mpc_run(modes, fps, deadline_ms, k, precompute_bps=None) == default
    build = MpcController._scenario_table

    def always_busy(self: MpcController, *args: object) -> object:
        table = build(self, *args)  # type: ignore[arg-type]
        table.min_start = -np.inf  # every latency through the general (queued) formula
        return table

    monkeypatch.setattr(MpcController, "_scenario_table", always_busy)
    assert _mpc_run(modes, fps, deadline_ms, k) == default


def test_mpc_builds_its_rate_tables_at_construction() -> None:
    ctl = MpcController(ABC, R30, MpcConfig(precompute_bps=(1e5, 1e7)))
    built = len(ctl._cache)
    assert built == pytest.approx(np.log(100) / 0.02, abs=2)  # every 2% grid step of the range
    feed(ctl, 1e6)
    ctl.choose(1000.0, 0, 0)
    assert len(ctl._cache) == built  # the decision found every table it needed
    assert len(MpcController(ABC, R100)._cache) == 0  # frame rate unknown: built on first use
    for bad in ((0.0, 1e6), (1e6, 1e5), (1e5, float("inf"))):
        with pytest.raises(ConfigError, match=r"^precompute_bps: "):
            MpcConfig(precompute_bps=bad)
