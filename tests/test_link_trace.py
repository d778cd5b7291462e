"""Traces: Mahimahi parsing (wrap, repeated lines, errors with file:line), queries, segments, rates, synthesis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimsplit.errors import ConfigError, TraceError
from slimsplit.link import synth
from slimsplit.link.synth import (
    SHARED_TRACES_ENV,
    LinkState,
    MarkovModel,
    PiecewiseModel,
    gilbert_elliott,
    shared_traces_dir,
    shipped_models,
    shipped_traces_dir,
    source_tree_root,
    write_shipped,
)
from slimsplit.link.trace import (
    MAX_TRACE_MS,
    Trace,
    load_mahimahi,
    load_trace_spec,
    parse_mahimahi,
    parse_rate,
    write_mahimahi,
)

SHARED = shared_traces_dir()


def small() -> Trace:
    # 10 ms: two packets (3000 B), 20 ms: one, 40 ms: one; the schedule repeats every 40 ms
    return parse_mahimahi("10\n10\n20\n40\n", "small.up")


def test_parse_repeated_lines_and_period() -> None:
    tr = small()
    assert tr.name == "small"
    assert tr.period_ms == 40.0
    assert tr.total_bytes == 6000.0
    assert list(tr.times_ms) == [10.0, 20.0, 40.0]
    assert list(tr.cum_bytes) == [3000.0, 4500.0, 6000.0]
    assert tr.mean_bps == pytest.approx(6000 * 8 / 0.040)


def test_bytes_before_and_through_are_hand_computed() -> None:
    tr = small()
    assert tr.bytes_before(0.010) == 0.0
    assert tr.bytes_through(0.010) == 3000.0
    assert tr.bytes_before(0.0101) == 3000.0
    assert tr.bytes_through(0.039) == 4500.0
    assert tr.bytes_through(0.040) == 6000.0
    # the trace wraps at its last timestamp: cycle 1 starts at 40 ms, first opportunity at 50 ms
    assert tr.bytes_before(0.045) == 6000.0
    assert tr.bytes_through(0.050) == 9000.0
    assert tr.bytes_through(0.400) == 60000.0  # ten full cycles
    assert tr.bytes_before(0.0) == 0.0 and tr.bytes_through(-1.0) == 0.0


def test_time_of_byte_per_byte_accounting_and_wrap() -> None:
    tr = small()
    assert tr.time_of_byte(1) == pytest.approx(0.010)
    assert tr.time_of_byte(3000) == pytest.approx(0.010)  # two packets in the same millisecond
    assert tr.time_of_byte(3001) == pytest.approx(0.020)
    assert tr.time_of_byte(6000) == pytest.approx(0.040)
    assert tr.time_of_byte(6001) == pytest.approx(0.050)
    assert tr.time_of_byte(12000) == pytest.approx(0.080)
    vec = tr.times_of_bytes(np.asarray([1.0, 3001.0, 6001.0, 12000.0]))
    assert list(np.round(vec, 6)) == [0.01, 0.02, 0.05, 0.08]
    arr = tr.bytes_before_array(np.asarray([0.0, 0.0101, 0.045]))
    assert list(arr) == [0.0, 3000.0, 6000.0]


def test_first_timestamp_zero_is_accepted() -> None:
    tr = parse_mahimahi("0\n5\n10\n")
    assert tr.period_ms == 10.0
    # instant 0 of cycle 1 coincides with instant 10 of cycle 0: both packets are there
    assert tr.bytes_through(0.010) == 4 * 1500.0


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("5\n7\nabc\n", 3, "integer"),
        ("5\n-1\n", 2, "negative"),
        ("5\n9\n8\n", 3, "smaller"),
        ("0\n0\n", 2, "positive"),
        ("\n\n", 1, "empty"),
        ("5\n1.5\n", 2, "integer"),
        ("5\n1_0\n", 2, "decimal digits only"),  # int() takes "1_0"; Mahimahi's strtol does not
        ("5\n+7\n", 2, "decimal digits only"),
        ("5\n99999999999999999999999\n", 2, "too large"),  # over 64 bits
        ("5\n10000000000\n", 2, "too large"),  # 10^10 ms: a 1-s summary of it would never finish
        ("5\n1000000000\n", 2, "too large"),  # the bound, MAX_TRACE_MS, is excluded
    ],
)
def test_parse_errors_name_file_and_line(text: str, line: int, what: str) -> None:
    with pytest.raises(TraceError) as info:
        parse_mahimahi(text, "bad.up")
    assert f"bad.up:{line}:" in str(info.value)
    assert what in str(info.value)
    assert info.value.context["line"] == line


def test_blank_lines_are_ignored(tmp_path: Path) -> None:
    p = tmp_path / "x.up"
    p.write_text("3\n\n3\n  7  \n")
    tr = load_mahimahi(p)
    assert tr.total_bytes == 4500.0 and tr.period_ms == 7.0


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="not found"):
        load_mahimahi(tmp_path / "missing.up")
    p = tmp_path / "bin.up"
    p.write_bytes(b"1\n2\n\xff\xfe\n")
    with pytest.raises(TraceError, match=r"bin\.up:3:"):
        load_mahimahi(p)
    folder = tmp_path / "traces"
    folder.mkdir()
    with pytest.raises(TraceError, match="is a directory") as info:
        load_mahimahi(folder)
    assert info.value.context["file"] == str(folder)


def test_the_longest_trace_allowed_is_summarised_quickly() -> None:
    tr = parse_mahimahi(f"10\n{MAX_TRACE_MS - 1}\n", "long.up")  # about 11.6 days: a million 1-s bins
    d = tr.describe()
    assert d["duration_s"] == pytest.approx((MAX_TRACE_MS - 1) / 1000.0)
    assert d["zero_s"] >= 999_990
    with pytest.raises(TraceError, match="64 bits"):
        Trace.from_timestamps([1, 2**64])
    with pytest.raises(TraceError, match="below"):
        Trace.from_timestamps([1, MAX_TRACE_MS])


def test_instant_queries_are_hand_computed() -> None:
    tr = small()  # instants end at byte positions 3000 (10 ms), 4500 (20 ms), 6000 (40 ms), 9000 (50 ms), ...
    assert tr.max_instant_bytes == 3000.0
    assert tr.usable_fraction(1500) == pytest.approx(4500 / 6000)  # 1500 of the 3000 at 10 ms, all of the others
    assert tr.usable_fraction(3000) == 1.0
    assert tr.next_end(0.0) == pytest.approx((3000.0, 0.010))
    assert tr.next_end(3000.0) == pytest.approx((4500.0, 0.020))
    assert tr.next_end(6000.0) == pytest.approx((9000.0, 0.050))  # wraps into the second period
    ends, times = tr.instant_ends(100.0, 9000.0)  # strictly inside: 9000 itself is the end, not inside
    assert list(ends) == [3000.0, 4500.0, 6000.0]
    assert list(np.round(times, 6)) == [0.01, 0.02, 0.04]
    assert tr.instant_ends(3000.0, 4500.0)[0].size == 0


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "rt.trace"
    write_mahimahi([1, 1, 2, 9], p)
    tr = load_mahimahi(p)
    assert tr.name == "rt" and list(tr.cum_bytes) == [3000.0, 4500.0, 6000.0]


def test_constant_rate() -> None:
    tr = Trace.constant(1e6)
    assert tr.mean_bps == pytest.approx(1e6)
    assert tr.packet_bytes is None
    assert tr.time_of_byte(12500) == pytest.approx(0.100)  # 125 bytes per millisecond
    assert tr.bytes_before(0.010) == pytest.approx(9 * 125.0)
    with pytest.raises(TraceError):
        Trace.constant(0)


def test_segment_shifts_and_wraps() -> None:
    tr = small()
    seg = tr.segment(0.015, 0.040)  # [15, 55) ms: instants 20, 40, 50 (=10 of cycle 1)
    assert seg.period_ms == 40.0
    assert list(seg.times_ms) == [5.0, 25.0, 35.0]
    assert list(np.diff(np.concatenate(([0.0], seg.cum_bytes)))) == [1500.0, 1500.0, 3000.0]
    with pytest.raises(TraceError):
        tr.segment(0.0, 0.0)


def test_capacity_series_and_describe() -> None:
    tr = Trace.constant(2e6, period_ms=5000)
    cap = tr.capacity_series(1.0)
    assert cap.shape == (5,) and np.allclose(cap, 2e6, rtol=0.01)  # bins are [a, b): 999 or 1000 ms
    d = tr.describe()
    assert d["duration_s"] == 5.0 and d["zero_s"] == 0.0 and d["p50_mbps"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("text", "bps"), [("1.5mbit", 1.5e6), ("800kbit", 8e5), ("2000000", 2e6), ("12Mbps", 12e6), ("1e6", 1e6)]
)
def test_parse_rate(text: str, bps: float) -> None:
    assert parse_rate(text) == pytest.approx(bps)


def test_parse_rate_rejects_garbage() -> None:
    with pytest.raises(TraceError, match="cannot parse rate"):
        parse_rate("fast")


def test_load_trace_spec(tmp_path: Path) -> None:
    assert load_trace_spec("none") is None
    tr = load_trace_spec("3mbit")
    assert tr is not None and tr.mean_bps == pytest.approx(3e6)
    p = tmp_path / "t.up"
    p.write_text("4\n8\n")
    spec = load_trace_spec(str(p))
    assert spec is not None and spec.total_bytes == 3000.0


def test_markov_model_is_seeded_and_has_outages() -> None:
    m = gilbert_elliott(2e6, 0.5e6, 2.0, 1.0, outage_s=1.0, p_outage=0.9, duration_s=60.0, seed=5)
    a, b = m.timestamps(), m.timestamps()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, gilbert_elliott(duration_s=60.0, seed=6).timestamps())
    tr = m.trace()
    assert tr.period_ms == 60000.0
    assert np.diff(tr.times_ms).max() >= 500.0  # at least one outage-length gap
    assert 0.2e6 < tr.mean_bps < 2.2e6


def test_markov_model_validation() -> None:
    s = LinkState("a", 1e6, 1.0)
    with pytest.raises(ConfigError):
        MarkovModel((s,), ((0.5,),))
    with pytest.raises(ConfigError):
        MarkovModel((s, s), ((1.0, 0.0),))
    with pytest.raises(ConfigError):
        gilbert_elliott(p_outage=0.5, outage_s=0.0)


def test_piecewise_model_rates() -> None:
    tr = PiecewiseModel(((2.0, 1.2e6), (1.0, 0.0), (2.0, 2.4e6))).trace()
    cap = tr.capacity_series(1.0)
    assert cap[0] == pytest.approx(1.2e6, rel=0.02)
    assert cap[2] < 0.05e6  # the outage (one end-of-period marker aside)
    assert cap[3] == pytest.approx(2.4e6, rel=0.02)


def test_shipped_traces_are_regenerated_exactly(tmp_path: Path) -> None:
    written = write_shipped(tmp_path)
    assert [p.name for p in written] == [s.file for s in shipped_models()]
    for p in written:
        shipped = shipped_traces_dir() / p.name
        assert shipped.read_bytes() == p.read_bytes(), f"{p.name} differs from its generator"
        assert shipped.stat().st_size < 200_000


@pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"no shared cellular traces at {SHARED} (set {SHARED_TRACES_ENV} to their folder)"
)
def test_shared_traces_match_their_readme() -> None:
    tr = load_mahimahi(SHARED / "ATT-LTE-driving.up")
    d = tr.describe()
    assert d["duration_s"] == pytest.approx(1012, abs=1)
    assert d["mean_mbps"] == pytest.approx(0.83, abs=0.01)
    assert d["zero_s"] == 94


def test_the_shared_traces_lie_beside_the_repository_unless_the_variable_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = Path(__file__).resolve().parents[1]
    assert source_tree_root() == root
    monkeypatch.delenv(SHARED_TRACES_ENV, raising=False)
    assert shared_traces_dir() == root.parent / "shared" / "traces"
    monkeypatch.setenv(SHARED_TRACES_ENV, str(tmp_path))
    assert shared_traces_dir() == tmp_path


def test_the_source_tree_is_the_folder_whose_pyproject_names_slimsplit(tmp_path: Path) -> None:
    module = tmp_path / "repo" / "slimsplit" / "link" / "synth.py"
    module.parent.mkdir(parents=True)
    module.write_text("")
    pyproject = tmp_path / "repo" / "pyproject.toml"
    pyproject.write_text('[project]\nname = "slimsplit"\n')
    assert source_tree_root(module) == tmp_path / "repo"
    pyproject.write_text('[project]\nname = "someone-else"\n')  # a project that installed slimsplit in its venv
    assert source_tree_root(module) is None
    pyproject.write_text("not toml [")
    assert source_tree_root(module) is None


def test_without_a_repository_the_shared_traces_need_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SHARED_TRACES_ENV, raising=False)
    monkeypatch.setattr(synth, "source_tree_root", lambda start=None: None)
    with pytest.raises(ConfigError, match=SHARED_TRACES_ENV):
        shared_traces_dir()
