"""Edge pieces that need no server: status mapping, configuration, sources, results, display."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import grpc
import numpy as np
import pytest

from slimsplit import errors
from slimsplit.bundle import InputSpec
from slimsplit.edge import status
from slimsplit.edge.channel import channel_options, service_config
from slimsplit.edge.config import ChannelConfig, ClientConfig, ReconnectPolicy, parse_address
from slimsplit.edge.display import LineDisplay, LiveDisplay, TickerDisplay, format_frame, format_summary, make_display
from slimsplit.edge.sources import fit_image, from_arrays, load_folder, load_npz, open_source, resize_bilinear
from slimsplit.records import FrameRecord, RunTally, ServerTiming, percentile, reason_kind, summarize

SPEC = InputSpec(channels=3, height=8, width=8)

# ------------------------------------------------------------------------------------------------ status


def test_reverse_table_agrees_with_every_error_class() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.SlimsplitError) and obj is not errors.SlimsplitError
    ]
    for cls in classes:
        # every status a class travels as maps back to a class that travels as that same status
        back = status.error_class(cls.grpc_status)
        assert back.grpc_status == cls.grpc_status
        # naming the exact class narrows the mapping to it
        assert status.error_class(cls.grpc_status, cls.__name__) is cls


def test_reverse_table_prefers_general_and_per_frame_classes() -> None:
    assert status.error_class("INVALID_ARGUMENT") is errors.InvalidFrame
    assert status.error_class(grpc.StatusCode.FAILED_PRECONDITION) is errors.UnsupportedVersion
    assert status.error_class(3) is errors.InvalidFrame  # numeric code of INVALID_ARGUMENT
    assert status.error_class("RESOURCE_EXHAUSTED") is errors.Overloaded
    assert status.error_class("UNAVAILABLE") is errors.Unavailable
    assert status.error_class("DEADLINE_EXCEEDED") is errors.DeadlineExceeded
    # a class name that does not travel as the received status is ignored
    assert status.error_class("NOT_FOUND", "Overloaded") is errors.UnknownModel
    assert status.error_class("NOT_FOUND", "UnknownMode") is errors.UnknownMode
    # statuses no class claims fall back to the base class
    assert status.error_class("ABORTED") is errors.SlimsplitError
    assert status.error_class("PERMISSION_DENIED") is errors.PermissionDenied
    assert status.status_name(999) == "UNKNOWN"
    assert status.status_name("bogus") == "UNKNOWN"


def test_error_from_status_keeps_message_and_status() -> None:
    exc = status.error_from_status("NOT_FOUND", "no mode 'w99b9'", frame_id=7)
    assert isinstance(exc, errors.SlimsplitError)
    assert str(exc) == "no mode 'w99b9'"
    assert exc.context == {"status": "NOT_FOUND", "frame_id": 7}
    assert status.status_of(exc) == "NOT_FOUND"
    assert status.status_of(ValueError()) == "INTERNAL"


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("localhost", "localhost:50051"),
        ("[::1]:6000", "[::1]:6000"),
        (" host.example:1 ", "host.example:1"),
    ],
)
def test_parse_address_accepts(text: str, target: str) -> None:
    assert parse_address(text) == target


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("http://x:1", "without a scheme"),
        ("host:port", "is not a number"),
        ("host:70000", "outside 1-65535"),
        ("::1:5", "brackets"),
        ("[::1", "unterminated"),
        ("[nope]:5", "not an IPv6"),
        (":5", "host is missing"),
    ],
)
def test_parse_address_rejects_with_a_named_problem(text: str, fragment: str) -> None:
    with pytest.raises(errors.ConfigError, match=fragment):
        parse_address(text)


def test_config_validation_and_backoff() -> None:
    with pytest.raises(errors.ConfigError, match="max_in_flight"):
        ClientConfig(max_in_flight=0)
    with pytest.raises(errors.ConfigError, match="deadline_ms"):
        ClientConfig(deadline_ms=0)
    with pytest.raises(errors.ConfigError, match="jitter"):
        ReconnectPolicy(jitter=1.5)
    policy = ReconnectPolicy(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.5)
    assert policy.delay(1, 0.5) == pytest.approx(0.1)
    assert policy.delay(3, 0.5) == pytest.approx(0.4)
    assert policy.delay(10, 0.5) == pytest.approx(1.0)  # capped
    assert policy.delay(2, 0.0) == pytest.approx(0.1)  # 0.2 * (1 - 0.5)
    assert policy.delay(2, 0.999999) == pytest.approx(0.3, rel=1e-5)


def test_channel_options_carry_limits_keepalive_and_retry_policy() -> None:
    cfg = ChannelConfig(max_message_bytes=1234, keepalive_time_ms=7000)
    opts = dict(channel_options(cfg))
    assert opts["grpc.max_send_message_length"] == 1234
    assert opts["grpc.max_receive_message_length"] == 1234
    assert opts["grpc.keepalive_time_ms"] == 7000
    assert opts["grpc.enable_retries"] == 1
    sc = json.loads(service_config(cfg))
    by_method = {n["method"]: m for m in sc["methodConfig"] for n in m["name"]}
    assert all(n["service"] == "slimsplit.v1.SplitInference" for m in sc["methodConfig"] for n in m["name"])
    assert sorted(by_method) == ["Describe", "Infer", "InferStream"]  # each method in one entry (gRPC's rule)
    for name in ("Infer", "Describe"):
        assert by_method[name]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
        assert by_method[name]["retryPolicy"]["maxAttempts"] >= 2
    assert "retryPolicy" not in by_method["InferStream"]
    # a frame's reply is bounded far below the channel's message limit; Describe (manifests) is not
    assert by_method["Infer"]["maxResponseMessageBytes"] == by_method["InferStream"]["maxResponseMessageBytes"]
    assert by_method["InferStream"]["maxResponseMessageBytes"] == cfg.max_reply_bytes == 64 * 1024
    assert "maxResponseMessageBytes" not in by_method["Describe"]


# ------------------------------------------------------------------------------------------------ sources


def test_fit_image_converts_gray_alpha_chw_and_resizes() -> None:
    rgb = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    assert fit_image(rgb, SPEC, "x") is not None
    np.testing.assert_array_equal(fit_image(rgb, SPEC, "x"), rgb)
    gray = np.full((8, 8), 7, dtype=np.uint8)
    assert fit_image(gray, SPEC, "x").shape == (8, 8, 3)
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    assert fit_image(rgba, SPEC, "x").shape == (8, 8, 3)
    chw = np.zeros((3, 8, 5), dtype=np.uint8)
    assert fit_image(chw, SPEC, "x").shape == (8, 8, 3)
    big = np.full((32, 16, 3), 200, dtype=np.uint8)
    out = fit_image(big, SPEC, "x")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and int(out.min()) == 200


def test_resize_bilinear_keeps_a_gradient_monotone() -> None:
    ramp = np.tile(np.linspace(0, 255, 16, dtype=np.float32).astype(np.uint8)[None, :, None], (4, 1, 3))
    small = resize_bilinear(ramp, 4, 8)
    assert small.shape == (4, 8, 3)
    assert np.all(np.diff(small[0, :, 0].astype(int)) > 0)


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.zeros((8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "2 channels"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), "expected an image"),
        (np.full((8, 8, 3), 300, dtype=np.int32), "0..255"),
    ],
)
def test_fit_image_rejects_with_a_named_problem(image: np.ndarray, fragment: str) -> None:
    with pytest.raises(errors.DatasetError, match=fragment):
        fit_image(image, SPEC, "frame[3]")


def test_npz_source_with_labels_and_class_alignment(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "frames.npz"
    np.savez(path, images=images, labels=np.array([0, 1, 0, 1, 1]), classes=np.array(["b", "a"]))
    source = open_source(str(path), SPEC, ("a", "b"))
    assert len(source) == 5
    assert source.frames[0].image.shape == (8, 8, 3)
    # labels are re-expressed in the model's class order: npz class 0 is "b", the model's index 1
    assert [f.label for f in source] == [1, 0, 1, 0, 0]
    # cycling past the end renumbers the frames
    taken = list(source.take(12, cycle=True))
    assert [f.index for f in taken] == list(range(12))
    assert taken[7].label == source.frames[2].label


def test_npz_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, pictures=np.zeros((1, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(errors.DatasetError, match="no 'images' array"):
        load_npz(bad, SPEC)
    with pytest.raises(errors.DatasetError, match="must match"):
        from_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.array([1]), SPEC, description="x")
    with pytest.raises(errors.DatasetError, match="does not exist"):
        open_source(str(tmp_path / "missing.npz"), SPEC)
    notnpz = tmp_path / "x.txt"
    notnpz.write_text("hi")
    with pytest.raises(errors.DatasetError, match="expected a folder"):
        open_source(str(notnpz), SPEC)


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    from PIL import Image

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(tmp_path / cls / f"{i}.png")
    source = load_folder(tmp_path, SPEC, ("dog", "cat"))
    assert [f.label for f in source] == [1, 1, 0, 0]
    assert source.frames[0].image.shape == (8, 8, 3)
    assert int(source.frames[3].image[0, 0, 0]) == 200
    # unknown class names: labels dropped, with a note saying why
    other = load_folder(tmp_path, SPEC, ("x", "y"))
    assert all(f.label is None for f in other)
    assert other.notes and "do not match" in other.notes[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(errors.DatasetError, match="holds no images"):
        load_folder(empty, SPEC)


# ------------------------------------------------------------------------------------------------ results


def _ok(index: int, label: int | None, top: int, latency: float, nbytes: int = 100) -> FrameRecord:
    return FrameRecord(
        frame_id=index + 1,
        index=index,
        mode="w4b4",
        label=label,
        classes=(top, 0),
        scores=(0.9, 0.1),
        payload_bytes=nbytes,
        rtt_ms=latency / 2,
        transfer_ms=latency / 4,
        latency_ms=latency,
        server=ServerTiming(total_ms=latency / 4),
    )


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_summary_counts_accuracy_latency_and_errors() -> None:
    results = [_ok(i, label=i % 2, top=0, latency=float(i + 1)) for i in range(10)]
    results.append(FrameRecord(frame_id=99, index=10, mode="w4b4", status="DEADLINE_EXCEEDED", payload_bytes=100))
    results.append(FrameRecord(frame_id=100, index=11, mode="w4b4", status="UNAVAILABLE", error="down"))
    s = summarize(results, wall_s=2.0)
    assert s.frames == 12 and s.ok == 10
    assert s.accuracy == pytest.approx(0.5)  # top-1 is 0, half the labels are 0
    assert s.latency_ms.p50 == pytest.approx(5.5)
    assert s.errors == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 1}
    assert s.fps == pytest.approx(5.0)
    assert s.bytes_per_frame == pytest.approx(100.0)
    d = s.to_dict()
    assert d["latency_ms"]["p50"] == pytest.approx(5.5)
    assert results[11].to_dict()["rtt_ms"] is None  # NaN becomes null in JSON


def test_line_display_and_summary_text() -> None:
    out = io.StringIO()
    display = make_display(out, live=False, class_names=("zero", "one"))
    assert isinstance(display, LineDisplay)
    display.start("header")
    r_ok = _ok(0, label=1, top=0, latency=3.0)
    r_err = FrameRecord(frame_id=2, index=1, mode="w4b4", status="INVALID_ARGUMENT", error="bad header")
    display.frame(r_ok)
    display.frame(r_err)
    display.finish(summarize([r_ok, r_err], 1.0), RunTally.of([r_ok, r_err], by_mode=True).by_mode(1.0))
    text = out.getvalue()
    assert "\x1b[" not in text  # plain output has no escape codes
    assert "-> zero" in text and "WRONG (is one)" in text
    assert "INVALID_ARGUMENT: bad header" in text
    assert re.search(r"accuracy\s+0\.0 % top-1 over 1 labelled", text)
    assert re.search(r"errors\s+INVALID_ARGUMENT: 1", text)


def test_live_display_redraws_in_place() -> None:
    out = io.StringIO()
    display = LiveDisplay(out, ("zero", "one"), rows=3, refresh_hz=1e9)
    display.start("h")
    for i in range(5):
        display.frame(_ok(i, label=0, top=0, latency=1.0))
    text = out.getvalue()
    assert "\x1b[4F" in text  # moved back over 3 rows + status line
    assert "frames 5" in text
    summary = format_summary(summarize([_ok(0, 0, 0, 1.0)], 1.0))
    assert re.search(r"accuracy\s+100\.0 %", summary)


def test_make_display_is_plain_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("CI", "true")
    assert isinstance(make_display(Tty()), LineDisplay)
    monkeypatch.delenv("CI")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert isinstance(make_display(Tty()), LiveDisplay)
    assert isinstance(make_display(io.StringIO()), LineDisplay)


def _deadline_run() -> list[FrameRecord]:
    """Five frames held to a 100 ms deadline: two in time, one late, one skipped, one dropped."""

    def ok(index: int, mode: str, latency: float, label: int) -> FrameRecord:
        return FrameRecord(
            frame_id=index + 1, index=index, mode=mode, label=label, classes=(0,), scores=(0.9,),
            payload_bytes=100 if mode == "w4b4" else 300, latency_ms=latency, deadline_ms=100.0,
            estimate_bps=1.5e6, predicted_ms=60.0, reason="mpc",
        )  # fmt: skip

    return [
        ok(0, "w16b4", 50.0, label=0),
        ok(1, "w16b4", 150.0, label=0),
        FrameRecord(
            6, 2, "", "SKIPPED", "in-flight limit (4 frames)", 1, reason="in-flight limit (4 frames)", deadline_ms=100.0
        ),
        ok(3, "w4b4", 80.0, label=1),
        FrameRecord(
            8, 4, "w4b4", "DEADLINE_EXCEEDED", "no reply within 2000 ms", 0, payload_bytes=100, deadline_ms=100.0
        ),
    ]


def test_summary_accounts_for_the_deadline_skips_drops_and_switches() -> None:
    results = _deadline_run()
    assert [r.hit for r in results] == [True, False, False, True, False]
    assert [r.sent for r in results] == [True, True, False, True, True]
    s = summarize(results, wall_s=30.0)
    assert s.deadline_ms == 100.0 and s.hits == 2 and s.hit_rate == pytest.approx(0.4) and s.late == 1
    assert s.skipped == {"in-flight limit": 1} and s.dropped == {"DEADLINE_EXCEEDED": 1}
    assert s.chosen == {"w16b4": 2, "w4b4": 2}
    assert s.switches == 1 and s.switches_per_min == pytest.approx(2.0)
    assert s.timely_accuracy == pytest.approx(1 / 5)  # only frame 0 is right and in time; frame 3 is wrong
    assert results[1].to_dict()["hit"] is False
    assert _ok(0, 0, 0, 1.0).hit is None and summarize([_ok(0, 0, 0, 1.0)], 1.0).hit_rate is None
    text = format_summary(s, RunTally.of(results, by_mode=True).by_mode(1.0))
    assert "deadline     100 ms: 2 of 5 frames answered in time (40.0 %); 1 late, 1 skipped, 1 dropped" in text
    assert re.search(r"skipped\s+in-flight limit: 1", text) and re.search(r"dropped\s+DEADLINE_EXCEEDED: 1", text)
    assert "w16b4 2, w4b4 2; 1 switches (2.0 per minute)" in text
    assert "deadline" not in format_summary(summarize([_ok(0, 0, 0, 1.0)], 1.0))  # no deadline, no such lines


def test_reason_kind_drops_the_figures() -> None:
    assert reason_kind("in-flight limit (4 frames)") == "in-flight limit"
    assert reason_kind("no mode is worth sending (lightest ~120 ms)") == "no mode is worth sending"
    assert reason_kind("mpc: outage, lightest mode") == "mpc"
    assert reason_kind("") == "unspecified"


def test_frame_lines_show_the_deadline_verdict_and_the_estimate() -> None:
    results = _deadline_run()
    lines = [format_frame(r) for r in results]
    assert " hit " in lines[0] and "est 1.50 Mbit/s" in lines[0] and "(pred  60.0)" in lines[0]
    assert " MISS" in lines[1]
    assert "SKIPPED: in-flight limit (4 frames)" in lines[2]
    assert "DEADLINE_EXCEEDED: no reply within 2000 ms" in lines[4]


def test_ticker_prints_one_line_per_interval_with_link_estimate_modes_and_skips() -> None:
    out = io.StringIO()
    display = make_display(out, live=False, every=1e-9, capacity=lambda: 250e3)
    assert isinstance(display, TickerDisplay)
    display.start("header")
    results = _deadline_run()
    for r in results:
        display.frame(r)  # every frame starts a new interval: the previous one is printed
    display.finish(summarize(results, 1.0), {})
    ticks = [line for line in out.getvalue().splitlines() if line.startswith("t ")]
    assert len(ticks) == 5
    assert all("link    250 kbit/s" in t for t in ticks)
    assert "modes w16b4 1" in ticks[0] and "in time   1/1" in ticks[0] and "est   1.50 Mbit/s" in ticks[0]
    assert "skipped 1 (in-flight limit)" in ticks[2] and "dropped 1" in ticks[4]
    assert "\x1b[" not in out.getvalue()


def test_live_display_draws_a_strip_of_the_modes_and_the_link() -> None:
    out = io.StringIO()
    display = LiveDisplay(out, rows=3, refresh_hz=1e9, capacity=lambda: 2e6, mode_order=("w4b4", "w16b4"))
    display.start("h")
    for r in _deadline_run():
        display.frame(r)
    text = out.getvalue()
    assert "modes  \u2585\u2585.\u2581x" in text  # w16b4 higher than w4b4, skipped '.', failed 'x'
    assert "link 2.00 Mbit/s" in text and "in time  40.0 % of 100 ms" in text and "skipped 1" in text
