"""One exit rule for ``slimsplit-edge``, ``slimsplit-demo`` and ``slimsplit-loadtest``; Ctrl-C that keeps the run
(partial summary, ``--json-out`` with ``"interrupted": true``, exit 130); an unwritable ``--json-out`` found before
the run; and an emulated link too slow for the start-up exchange told apart from an unreachable server, which is
named at the address given."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pytest
from control_helpers import FixedMode
from server_helpers import null_server

from slimsplit.apps import demo
from slimsplit.apps.loadtest import main as loadtest_main
from slimsplit.apps.loadtest.aggregate import ClientResult, load_exit_status, load_failure
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.control.modes import modes_from_manifest
from slimsplit.edge import cli_common
from slimsplit.edge.cli import main as edge_main
from slimsplit.edge.config import ClientConfig, ExitRule
from slimsplit.edge.display import QuietDisplay
from slimsplit.edge.link import MIN_RATE_BPS, LinkOptions, LinkTooSlow, format_bps
from slimsplit.edge.run import CANCELLED, EdgeRun, Stop, exit_status, run_edge, run_failure
from slimsplit.edge.sources import SourceFrame, load_sample
from slimsplit.edge.transport import Connection, Done, FrameTransport
from slimsplit.errors import ConfigError
from slimsplit.records import SKIPPED, FrameRecord, RunSummary, ServerTiming, summarize
from slimsplit.server.app import ServerThread
from slimsplit.v1 import slimsplit_pb2 as pb

TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with null_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def run_edge_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = edge_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def run_demo(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = demo.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def run_loadtest(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = loadtest_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------ the exit rule


def _record(index: int, status: str = "OK", *, mode: str = "w8b4", latency_ms: float = 10.0) -> FrameRecord:
    return FrameRecord(
        index + 1,
        index,
        "" if status == SKIPPED else mode,
        status=status,
        payload_bytes=0 if status == SKIPPED else 100,
        latency_ms=latency_ms,
        deadline_ms=100.0,
        server=ServerTiming(total_ms=1.0) if status == "OK" else None,
    )


def _summary(hits: int, late: int = 0, dropped: int = 0, skipped: int = 0) -> RunSummary:
    records = [_record(i) for i in range(hits)]
    records += [_record(len(records) + i, latency_ms=500.0) for i in range(late)]
    records += [_record(len(records) + i, "DEADLINE_EXCEEDED") for i in range(dropped)]
    records += [_record(len(records) + i, SKIPPED) for i in range(skipped)]
    return summarize(records, 1.0)


def test_the_defaults_fail_only_a_run_that_answered_nothing() -> None:
    rule = ExitRule()
    assert exit_status(_summary(0, dropped=1)) == 1  # a one-frame run with its frame dropped
    assert exit_status(_summary(0, skipped=5)) == 1  # nothing sent, nothing answered
    assert exit_status(_summary(0, late=3)) == 0  # answered, if late
    assert exit_status(_summary(136, dropped=164)) == 0  # the demo over its outage: a bad link, not a failure
    assert exit_status(_summary(1, dropped=99, skipped=100)) == 0
    assert run_failure(_summary(0, dropped=1), rule) == "1 frames, none answered"
    assert rule.failure(frames=0, answered=0, hits=0, sent=0) is not None


def test_the_thresholds_hold_at_their_value_and_fail_just_past_it() -> None:
    at_hit = ExitRule(min_hit_rate=0.7)
    assert exit_status(_summary(7, late=3), at_hit) == 0  # 7 of 10 in time: exactly the minimum
    assert exit_status(_summary(6, late=4), at_hit) == 1
    failure = run_failure(_summary(6, late=4), at_hit)
    assert failure is not None and "6 of 10 frames answered in time" in failure and "0.7" in failure
    at_drop = ExitRule(max_drop_rate=0.1)
    assert exit_status(_summary(9, dropped=1, skipped=5), at_drop) == 0  # 1 of 10 sent never answered
    assert exit_status(_summary(8, dropped=2, skipped=5), at_drop) == 1
    failure = run_failure(_summary(8, dropped=2), at_drop)
    assert failure is not None and "2 of 10 frames sent were never answered" in failure
    assert exit_status(_summary(10), ExitRule(min_hit_rate=1.0, max_drop_rate=0.0)) == 0


@pytest.mark.parametrize(("field", "value"), [("min_hit_rate", 1.5), ("max_drop_rate", -0.1), ("min_hit_rate", np.nan)])
def test_a_threshold_outside_0_to_1_is_refused_naming_it(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: expected a number from 0 to 1"):
        ExitRule(**{field: float(value)})


def test_the_load_tester_applies_the_rule_to_all_clients_frames() -> None:
    def client(index: int, summary: RunSummary | None, *, slow: bool = False) -> ClientResult:
        return ClientResult(index, "2mbit", "", 0.0, summary=summary, error="" if summary else "x", link_too_slow=slow)

    nothing, good = _summary(0, dropped=4), _summary(4)
    assert load_exit_status([client(0, nothing), client(1, good)]) == 0  # one client in an outage: not a failure
    assert load_exit_status([client(0, nothing), client(1, nothing)]) == 1
    assert load_failure([client(0, nothing), client(1, nothing)]) == "8 frames, none answered"
    assert load_exit_status([client(0, good), client(1, _summary(2, late=2))], ExitRule(min_hit_rate=0.75)) == 0
    assert load_exit_status([client(0, good), client(1, _summary(1, late=3))], ExitRule(min_hit_rate=0.75)) == 1
    assert load_exit_status([client(0, good), client(1, None)]) == 1  # a client could not run
    assert load_exit_status([client(0, None), client(1, None)]) == cli_common.EXIT_SERVER
    assert load_exit_status([client(0, None, slow=True), client(1, None, slow=True)]) == cli_common.EXIT_USAGE


@pytest.fixture
def forced_failure(monkeypatch: pytest.MonkeyPatch) -> list[ExitRule]:
    """Every run fails the exit rule ("forced"); the rules asked, in order."""
    asked: list[ExitRule] = []

    def failure(self: ExitRule, **counts: int) -> str:
        asked.append(self)
        return "forced"

    monkeypatch.setattr(ExitRule, "failure", failure)
    return asked


def test_the_edge_exits_by_the_rule_and_says_why(server: ServerThread, tmp_path: Path) -> None:
    # every frame answered, but after a deadline of 10 us (the give-up time is 5 s)
    late = ("--server", server.address, "--frames", "3", "--quiet", "--deadline-ms", "0.01", "--give-up-ms", "5000")
    code, _out, err = run_edge_cli(*late)
    assert code == 0, err
    code, _out, err = run_edge_cli(*late, "--min-hit-rate", "0.5")
    assert code == 1
    assert "slimsplit-edge: note: exit status 1: 0 of 3 frames answered in time (0.0%), below the minimum" in err
    config = tmp_path / "edge.toml"
    config.write_text("[output]\nmin_hit_rate = 0.5\n", encoding="utf-8")
    code, _out, err = run_edge_cli(*late, "--config", str(config))
    assert code == 1, err
    config.write_text("[output]\nmax_drop_rate = 2\n", encoding="utf-8")
    code, _out, err = run_edge_cli(*late, "--config", str(config))
    assert (code, err) == (
        2,
        f"slimsplit-edge: error: {config}: output.max_drop_rate: expected a number from 0 to 1, got 2.0\n",
    )
    code, out, _err = run_edge_cli("--print-config")
    assert "min_hit_rate = 0.0" in out and "max_drop_rate = 1.0" in out


def test_the_demo_and_the_load_tester_use_the_rule(
    forced_failure: list[ExitRule], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    code, _out, err = run_demo(
        "--link", "none", "--controller", "sweep", "--frames", "3", "--quiet", "--min-hit-rate", "0.25"
    )
    assert code == 1, err
    assert "slimsplit-demo: note: exit status 1: forced" in err
    assert forced_failure[-1] == ExitRule(min_hit_rate=0.25)
    code, _out, err = run_loadtest(
        "--in-process", "--server-backend", "null", "--clients", "2", "--seconds", "0.3", "--quiet",
        "--max-drop-rate", "0.5",
    )  # fmt: skip
    assert code == 1, err
    assert "slimsplit-loadtest: note: exit status 1: forced" in err
    assert forced_failure[-1] == ExitRule(max_drop_rate=0.5)
    for run, server in ((run_demo, ()), (run_loadtest, ("--server", "127.0.0.1:1")), (run_edge_cli, ())):
        code, _out, err = run(*server, "--min-hit-rate", "1.1")
        assert code == 2 and "--min-hit-rate: expected a number from 0 to 1, got 1.1" in err, err


def test_every_cli_documents_its_exit_statuses() -> None:
    from slimsplit.apps.loadtest.args import build_parser as loadtest_parser
    from slimsplit.edge.cli import build_parser as edge_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert "### Exit codes" in readme
    table = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in (0, 1, 2, 3, 130, 141):
        assert f"\n| {code} | " in table
    assert "--min-hit-rate" in table and "--max-drop-rate" in table
    for parser in (edge_parser(), demo.build_parser(), loadtest_parser()):
        text = " ".join(parser.format_help().split())
        assert "exit status: 0 = the run went to its end and passed the exit rule; 1 =" in text, parser.prog
        for part in ("2 = a usage problem", "3 = the server cannot be reached", "130 = interrupted", "141 ="):
            assert part in text, (parser.prog, part)
        assert "--min-hit-rate R" in text and "--max-drop-rate R" in text


# ------------------------------------------------------------------------------------------------ --json-out


def test_an_unwritable_json_out_is_refused_before_anything_runs(tmp_path: Path, dead_address: str) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x", encoding="utf-8")
    cli_common.check_json_out(None)
    cli_common.check_json_out(tmp_path / "new" / "deeper" / "run.json")  # folders to be made: fine
    assert not (tmp_path / "new").exists()
    cli_common.check_json_out(a_file)  # an existing file is overwritten
    with pytest.raises(ConfigError, match="it is a folder"):
        cli_common.check_json_out(tmp_path)
    with pytest.raises(ConfigError, match=f"{a_file} is not a folder"):
        cli_common.check_json_out(a_file / "run.json")
    bad = str(a_file / "run.json")
    # the edge would find an unreachable server (3) after connecting: the path is a usage error before that
    code, _out, err = run_edge_cli("--server", dead_address, "--json-out", bad, "--connect-timeout", "5")
    assert (code, err) == (2, f"slimsplit-edge: error: cannot write --json-out {bad}: {a_file} is not a folder\n")
    code, out, err = run_demo("--link", "none", "--json-out", bad)  # before the demo starts its server
    assert code == 2 and "cannot write --json-out" in err and "starting a server" not in out
    code, _out, err = run_loadtest("--server", dead_address, "--json-out", bad)
    assert code == 2 and "cannot write --json-out" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_json_out_in_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="permission denied"):
            cli_common.check_json_out(folder / "run.json")
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------------------------------ a link too slow


def test_a_rate_too_slow_for_the_start_up_exchange_is_refused_at_once(tmp_path: Path) -> None:
    assert format_bps(2.0) == "2 bit/s" and format_bps(MIN_RATE_BPS) == "1 kbit/s"
    with pytest.raises(ConfigError, match=r"^uplink: '2' is 2 bit/s, too slow for an emulated link"):
        LinkOptions(uplink="2").config()
    with pytest.raises(ConfigError, match=r"^downlink: '900' is 900 bit/s"):
        LinkOptions(uplink="2mbit", downlink="900").config()
    assert LinkOptions(uplink="1kbit", downlink="1kbit").config() is not None
    assert LinkOptions(uplink="shipped:ge-outages").config() is not None  # a trace's outages are not refused here
    code, _out, err = run_edge_cli("--server", "127.0.0.1:1", "--link", "2")
    assert code == 2 and err.startswith("slimsplit-edge: error: --link: '2' is 2 bit/s, too slow for an emulated")
    assert "a rate without a unit is bits/s" in err
    config = tmp_path / "edge.toml"
    config.write_text('[link]\nuplink = "2"\n', encoding="utf-8")
    code, _out, err = run_edge_cli("--server", "127.0.0.1:1", "--config", str(config))
    assert code == 2 and err.startswith(f"slimsplit-edge: error: {config}: link.uplink: '2' is 2 bit/s"), err
    code, _out, err = run_demo("--downlink", "10")
    assert code == 2 and "--downlink: '10' is 10 bit/s" in err
    code, _out, err = run_loadtest("--server", "127.0.0.1:1", "--link", "2mbit", "2")
    assert code == 2 and "--link: '2' is 2 bit/s" in err


def test_a_link_that_cannot_carry_the_start_up_exchange_is_named_and_a_usage_error(server: ServerThread) -> None:
    # the uplink carries the edge's few hundred bytes; the downlink cannot carry the answer (the bundle's
    # manifest, a few kB) within the 5 s a start-up call may take
    code, _out, err = run_edge_cli(
        "--server", server.address, "--link", "2mbit", "--downlink", "1kbit", "--frames", "1"
    )
    assert code == cli_common.EXIT_USAGE, err
    assert err.startswith("slimsplit-edge: error: the emulated link (uplink constant 2.00 Mbit/s, downlink constant ")
    assert "cannot carry the start-up exchange within 5 s: the downlink carried " in err
    assert f"the server at {server.address} answers when dialled directly" in err
    assert err.count("\n") == 1 and "Deadline Exceeded" not in err


def test_an_unreachable_server_behind_a_link_is_named_at_the_address_given(dead_address: str) -> None:
    code, _out, err = run_edge_cli("--server", dead_address, "--link", "2mbit", "--connect-timeout", "0.3")
    assert code == cli_common.EXIT_SERVER
    assert err.startswith(f"slimsplit-edge: error: cannot reach a server at {dead_address} within 0.3 s")
    assert err.count("\n") == 1


def test_the_link_names_what_each_direction_carried() -> None:
    link = cli_common.link_from_options(LinkOptions(uplink="2kbit", downlink="3kbit"))
    assert link is not None

    async def go() -> str:
        with pytest.raises(LinkTooSlow) as raised:
            async with link.route("127.0.0.1:1"):
                assert link.proxy is not None
                link.proxy.stats.offered_up, link.proxy.stats.bytes_up = 500, 120
                link.proxy.stats.offered_down = link.proxy.stats.bytes_down = 40
                raise LinkTooSlow("stalled", target="10.0.0.5:50051", timeout_s=5.0)
        return str(raised.value)

    message = asyncio.run(go())
    assert message.startswith("the emulated link (uplink constant 2 kbit/s, downlink constant 3 kbit/s, ")
    assert "within 5 s: the uplink carried 120 of its 500 bytes; the server at 10.0.0.5:50051 answers" in message
    assert "downlink carried" not in message


# ------------------------------------------------------------------------------------------------ Stop


class _Encoded:
    def __init__(self, mode: str) -> None:
        self.payload = b"\0" * 64
        self.mode = mode
        self.encoder_ms = 0.1
        self.codec_ms = 0.1


class _Encoder:
    mode = ""

    def set_mode(self, name: str) -> None:
        self.mode = name

    def encode(self, image: npt.NDArray[np.uint8]) -> _Encoded:
        return _Encoded(self.mode)


class _Silent(FrameTransport):
    """Takes frames and never answers them."""

    def __init__(self) -> None:
        self.frames: list[pb.FeatureFrame] = []

    @property
    def in_flight(self) -> int:
        return len(self.frames)

    async def submit(self, frame: pb.FeatureFrame, deadline_s: float | None, done: Done) -> None:
        self.frames.append(frame)

    async def drain(self, timeout_s: float | None = None) -> bool:
        return False

    async def aclose(self) -> None:
        return None


class _SilentServer(Connection):
    def __init__(self, config: ClientConfig, target: str | None = None) -> None:
        super().__init__(config, target)
        self.transport = _Silent()

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        return None

    async def describe(self, model: str = "", timeout_s: float = 5.0) -> pb.DescribeResponse:
        return pb.DescribeResponse()

    def open_transport(self, *, unary: bool = False, planes: bool = False, seed: int | None = None) -> FrameTransport:
        return self.transport


class _StopAfter(QuietDisplay):
    """Requests ``stop`` once ``count`` frames have results."""

    def __init__(self, stop: Stop, count: int) -> None:
        super().__init__(io.StringIO())
        self.stop, self.count, self.seen = stop, count, 0

    def frame(self, result: FrameRecord) -> None:
        self.seen += 1
        if self.seen == self.count:
            self.stop.request()


def test_a_stopped_run_captures_no_more_and_records_the_frames_it_could_not_wait_for() -> None:
    manifest = Bundle.open(default_bundle_path()).manifest
    mode = manifest.modes[-1].name
    stop = Stop()
    frames = [SourceFrame(i, np.zeros((28, 28, 3), np.uint8), i % 10) for i in range(1000)]
    run = EdgeRun(
        manifest=manifest,
        encoder=_Encoder(),
        controller=FixedMode(mode),
        mode_table=modes_from_manifest(manifest),
        frames=frames,
        target="127.0.0.1:1",
        client=ClientConfig(max_in_flight=3, deadline_ms=50.0, give_up_ms=60_000.0),
        fps=100.0,
        check=False,
        rtt_pings=0,
        connect=_SilentServer,
        stop=stop,
    )
    started = time.perf_counter()
    report, summary = asyncio.run(run_edge(run, _StopAfter(stop, 4)))  # 3 frames in flight, then skips
    waited = time.perf_counter() - started
    assert stop.requested and waited < 5.0  # the 60 s give-up time is not waited for
    statuses = [r.status for r in report.results]
    assert statuses.count(CANCELLED) == 3 and statuses.count(SKIPPED) >= 4
    assert summary.frames == len(report.results) < 30  # capture stopped at once
    assert [r.index for r in report.results] == list(range(len(report.results)))
    assert exit_status(summary) == 1  # nothing was answered


def test_a_stopped_run_waits_for_the_frames_in_flight(server: ServerThread) -> None:
    from slimsplit.edge.runtime import EncoderRuntime

    bundle = Bundle.open(default_bundle_path())
    stop = Stop()
    run = EdgeRun(
        manifest=bundle.manifest,
        encoder=EncoderRuntime(bundle),
        controller=FixedMode(bundle.manifest.modes[-1].name),
        mode_table=modes_from_manifest(bundle.manifest),
        frames=load_sample(bundle.manifest.input).take(1000, cycle=True),
        target=server.address,
        client=ClientConfig(target=server.address, max_in_flight=4, deadline_ms=5_000.0),
        stop=stop,
    )  # unpaced: no frame is skipped
    report, summary = asyncio.run(run_edge(run, _StopAfter(stop, 5)))
    assert 5 <= summary.frames < 100
    assert all(r.ok for r in report.results)  # the frames in flight at the stop were answered, none cut
    assert summary.ok == summary.frames


# ------------------------------------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_asks_runs_to_stop_once_they_stream_and_cancels_them_otherwise() -> None:
    err = io.StringIO()
    console = cli_common.Console("slimsplit-test", io.StringIO(), err)
    cleaned: list[str] = []

    async def runs(stop: Stop, streaming: bool) -> str:
        stop.streaming = streaming
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
        try:
            if streaming:
                await stop.wait()
                loop.call_later(0.05, os.kill, os.getpid(), signal.SIGINT)  # a second Ctrl-C while stopping
            await asyncio.sleep(30)
            return "ran to its end"
        finally:
            cleaned.append(f"streaming={streaming}")

    stop = Stop()
    with pytest.raises(KeyboardInterrupt):  # before any frame: nothing to keep
        asyncio.run(cli_common.interruptible(console, stop, runs(stop, False)))
    assert cleaned == ["streaming=False"] and not stop.requested
    stop = Stop()
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(cli_common.interruptible(console, stop, runs(stop, True)))
    assert cleaned[-1] == "streaming=True" and stop.requested
    assert "note: stopping: no more frames" in err.getvalue()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_started_server_is_out_of_reach_of_the_terminals_ctrl_c() -> None:
    """A terminal's Ctrl-C goes to its whole foreground process group: the server the load tester starts is in a
    session of its own, so it keeps answering while the clients stop."""
    from slimsplit.apps.loadtest.server_process import ServerProcess

    with ServerProcess.start(default_bundle_path(), backend="null") as started:
        assert os.getsid(started.process.pid) != os.getsid(0)
        assert os.getpgid(started.process.pid) != os.getpgid(0)


class _Lines:
    """Reads a process's stream on a thread; :meth:`wait` until ``count`` lines satisfy ``match``."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait(self, match: Callable[[str], bool], count: int, timeout_s: float = TIMEOUT_S) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: sum(map(match, self.lines)) >= count, timeout_s)
        assert ok, "".join(self.lines[-20:])

    def text(self) -> str:
        self._thread.join(TIMEOUT_S)
        return "".join(self.lines)


def _ctrl_c(
    argv: Sequence[str], match: Callable[[str], bool], count: int, *, watch: str = "stdout", times: int = 1
) -> tuple[int, str, str, float]:
    """Run ``python -m argv`` in a process group of its own, wait for ``count`` lines of its ``watch`` stream that
    ``match``, send SIGINT to the whole group (as a terminal's Ctrl-C does) ``times`` times 0.3 s apart; the exit
    status, stdout, stderr and the seconds from the first SIGINT to the exit."""
    with subprocess.Popen(
        [sys.executable, "-m", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "CI": "true"},
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = _Lines(proc.stdout), _Lines(proc.stderr)
        try:
            (out if watch == "stdout" else err).wait(match, count)
            sent = time.perf_counter()
            for i in range(times):
                if i:
                    time.sleep(0.3)
                os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(TIMEOUT_S)
            took = time.perf_counter() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return code, out.text(), err.text(), took


def _frame_line(line: str) -> bool:
    return line.startswith("#")


def _check_interrupted(code: int, out: str, err: str, path: Path) -> dict[str, Any]:
    assert code == cli_common.EXIT_INTERRUPTED, err
    assert "Traceback" not in out + err
    assert "note: stopping: no more frames" in err and "note: interrupted: the summary covers" in err
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert doc["interrupted"] is True
    return doc


def test_ctrl_c_stops_the_edge_with_its_summary_and_json(server: ServerThread, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    argv = ["slimsplit.edge.cli", "--server", server.address, "--fps", "20", "--frames", "100000", "--plain"]
    code, out, err, took = _ctrl_c([*argv, "--link", "50mbit", "--json-out", str(path)], _frame_line, 5)
    doc = _check_interrupted(code, out, err, path)
    assert took < 10.0
    frames = doc["frames"]
    assert 5 <= doc["summary"]["frames"] == len(frames) < 1000
    assert [f["index"] for f in frames] == list(range(len(frames)))
    assert {f["status"] for f in frames} <= {"OK", "SKIPPED"}  # the frames in flight were answered, none cut
    assert "Summary" in out and f"{len(frames)} total, {doc['summary']['ok']} answered" in out


def test_a_second_ctrl_c_quits_at_once(server: ServerThread, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    argv = ["slimsplit.edge.cli", "--server", server.address, "--fps", "20", "--frames", "100000", "--plain"]
    slow = ["--link", "20kbit", "--give-up-ms", "30000", "--max-in-flight", "8", "--deadline-ms", "3000"]
    code, _out, err, took = _ctrl_c([*argv, *slow, "--json-out", str(path)], _frame_line, 1, times=2)
    assert code == cli_common.EXIT_INTERRUPTED and took < 10.0
    assert err.rstrip().endswith("slimsplit-edge: error: interrupted") and "Traceback" not in err
    assert not path.exists()


def test_ctrl_c_stops_the_demo_with_its_summary_and_json(tmp_path: Path) -> None:
    path = tmp_path / "demo.json"
    argv = ["slimsplit.apps.demo", "--link", "none", "--seconds", "120", "--plain", "--json-out", str(path)]
    code, out, err, _took = _ctrl_c(argv, _frame_line, 5)
    doc = _check_interrupted(code, out, err, path)
    assert 5 <= doc["summary"]["frames"] == len(doc["frames"]) < 120 * 30
    assert "Summary" in out


def test_ctrl_c_stops_the_load_tester_and_not_the_server_it_started(tmp_path: Path) -> None:
    path = tmp_path / "load.json"
    argv = [
        "slimsplit.apps.loadtest", "--start-server", "--server-backend", "null", "--clients", "2", "--link", "20mbit",
        "--seconds", "120", "--fps", "10", "--every", "0.2", "--json-out", str(path),
    ]  # fmt: skip

    def progress(line: str) -> bool:
        return " answered " in line and int(line.split(" answered ")[1].split()[0]) >= 6

    code, out, err, _took = _ctrl_c(argv, progress, 1, watch="stderr")
    doc = _check_interrupted(code, out, err, path)
    overall = doc["overall"]
    assert overall["answered"] >= 6 and overall["frames"] < 2 * 1200
    assert not overall["by_status"].keys() - {"SKIPPED"}  # the server answered every frame sent until the stop
    host, port = doc["meta"]["target"].rsplit(":", 1)
    with pytest.raises(OSError):  # and it was stopped with the load test
        socket.create_connection((host, int(port)), timeout=1.0).close()
    assert "all  2 clients" in out
