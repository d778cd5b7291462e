"""Running unattended: sd_notify over a real Unix datagram socket (READY, WATCHDOG repeated, STATUS, STOPPING), a
stalled loop that stops the pings, the journal's one line a second, the status file and ``slimsplit-edge status``,
and the edge's memory (RSS) measured with psutil on real processes, with the sample and with a video file.

``SLIMSPLIT_SOAK=short`` (CI) runs the memory soak for 60 s; without it, 30 minutes.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from server_helpers import null_server

from slimsplit.edge.cli import main as edge_main
from slimsplit.edge.config import ClientConfig, OutputSettings
from slimsplit.edge.display import JournalDisplay, QuietDisplay, format_journal, make_display, under_journal
from slimsplit.edge.pipeline import NOT_CONNECTED
from slimsplit.edge.status_file import (
    SCHEMA,
    StatusWindow,
    default_path,
    format_status,
    read_status,
    write_atomic,
)
from slimsplit.edge.unattended import Unattended, for_run, stall_limit_s
from slimsplit.edge.watchdog import Notifier, Watchdog, watchdog_timeout_s
from slimsplit.records import SKIPPED, FrameRecord, ServerTiming, summarize
from slimsplit.server.app import ServerThread

RSS_LIMIT_MB = 200.0
SOAK_S = 60.0 if os.environ.get("SLIMSPLIT_SOAK") == "short" else 1800.0


# ============================================================================================ helpers


@dataclass
class NotifyListener:
    """A bound ``AF_UNIX``/``SOCK_DGRAM`` socket, as systemd's ``$NOTIFY_SOCKET``; a thread keeps every datagram
    with the time it arrived."""

    path: str
    sock: socket.socket
    received: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.received.append((time.monotonic(), fields))

    def keys(self) -> list[str]:
        return [k for _, f in self.received for k in f]

    def times(self, key: str) -> list[float]:
        return [t for t, f in self.received if key in f]

    def wait_for(self, key: str, timeout_s: float = 10.0) -> None:
        end = time.monotonic() + timeout_s
        while key not in self.keys():
            assert time.monotonic() < end, f"no {key} within {timeout_s} s: {self.received}"
            time.sleep(0.01)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    lis = NotifyListener(path, sock)
    thread = threading.Thread(target=lis.run, daemon=True)
    thread.start()
    try:
        yield lis
    finally:
        lis._stop.set()
        thread.join(2)
        sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with null_server() as srv:
        yield srv


def record(
    index: int, *, status: str = "OK", mode: str = "w8b4", latency_ms: float = 20.0, reason: str = ""
) -> FrameRecord:
    ok = status == "OK"
    return FrameRecord(
        index,
        index,
        mode if status != SKIPPED else "",
        status,
        "" if ok else "failed",
        classes=(1,) if ok else (),
        scores=(0.9,) if ok else (),
        payload_bytes=800 if status != SKIPPED else 0,
        latency_ms=latency_ms,
        server=ServerTiming(total_ms=1.0) if ok else None,
        reason=reason,
        estimate_bps=2e6,
        deadline_ms=100.0,
    )


def edge_command(address: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "slimsplit.edge.cli", "--server", address, "--controller", "fixed", *args]


def edge_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    env.update(extra)
    return env


def sample_rss(proc: subprocess.Popen[bytes], every_s: float) -> list[tuple[float, float]]:
    """(seconds since start, RSS in MB) of ``proc`` every ``every_s`` until it exits."""
    import psutil

    ps = psutil.Process(proc.pid)
    start = time.monotonic()
    samples = []
    while proc.poll() is None:
        try:
            samples.append((time.monotonic() - start, ps.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:
            break
        time.sleep(every_s)
    return samples


# ============================================================================================ sd_notify


def test_notifier_sends_each_message_to_the_socket(listener: NotifyListener) -> None:
    notifier = Notifier(listener.path)
    assert notifier.enabled
    assert notifier.ready("streaming")
    assert notifier.watchdog()
    assert notifier.watchdog("still\nhere\x07")  # a newline would start a new key: one line, printable
    assert notifier.stopping("done")
    listener.wait_for("STOPPING")
    fields = [f for _, f in listener.received]
    assert fields[0] == {"READY": "1", "STATUS": "streaming"}
    assert fields[1] == {"WATCHDOG": "1"}
    assert fields[2] == {"WATCHDOG": "1", "STATUS": "still here?"}
    assert fields[3] == {"STOPPING": "1", "STATUS": "done"}
    notifier.close()


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"slimsplit-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier("@" + name)
        assert notifier.status("hello")
        assert sock.recv(100) == b"STATUS=hello"
        notifier.close()


def test_notifier_without_a_socket_is_a_no_op(tmp_path: Path) -> None:
    assert not Notifier.from_env({}).enabled
    assert not Notifier.from_env({}).ready()
    gone = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert not gone.watchdog() and gone.errors == 1  # counted, never raised
    gone.close()


def test_watchdog_timeout_comes_from_systemd_for_this_process_only() -> None:
    assert watchdog_timeout_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_timeout_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_timeout_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_timeout_s({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_timeout_s({}) is None


def test_watchdog_pings_only_while_the_run_makes_progress(listener: NotifyListener) -> None:
    now = [0.0]
    notifier = Notifier(listener.path)
    dog = Watchdog(notifier, 3.0, stall_s=5.0, clock=lambda: now[0])
    assert dog.interval_s == 1.0
    assert dog.ping("ok")
    now[0] = 4.0
    assert dog.ping()  # 4 s without progress, within stall_s
    now[0] = 6.0
    assert not dog.ping()  # stalled: no WATCHDOG=1, only a status saying so
    dog.beat()
    assert dog.ping()
    listener.wait_for("STATUS")
    time.sleep(0.2)
    fields = [f for _, f in listener.received]
    assert [("WATCHDOG" in f) for f in fields] == [True, True, False, True]
    assert fields[2]["STATUS"].startswith("stalled: no progress for 6 s")
    notifier.close()


def run_unattended(listener: NotifyListener, script: list[tuple[str, float]]) -> Unattended:
    """An :class:`Unattended` with a 0.3 s watchdog, driven on a real event loop by ``script``: ``("frames", s)``
    = a frame every 20 ms for s seconds; ``("block", s)`` = the event loop blocked for s seconds; ``("idle", s)`` =
    the loop runs, no frame comes."""
    u = Unattended(QuietDisplay(io.StringIO()), notifier=Notifier(listener.path), watchdog_timeout_s=0.3, stall_s=0.4)

    async def main() -> None:
        u.start("header")
        i = 0
        for what, seconds in script:
            end = time.monotonic() + seconds
            if what == "block":
                time.sleep(seconds)  # a stuck call on the event loop: nothing else runs
            while what != "block" and time.monotonic() < end:
                if what == "frames":
                    u.frame(record(i))
                    i += 1
                await asyncio.sleep(0.02)
        u.finish(summarize([], 1.0), {})

    asyncio.run(main())
    listener.wait_for("STOPPING")
    return u


def gaps(times: list[float], start: float, end: float) -> float:
    """The longest interval in [start, end] without one of ``times``."""
    points = [start, *(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def test_a_blocked_event_loop_stops_the_pings(listener: NotifyListener) -> None:
    run_unattended(listener, [("frames", 1.0), ("block", 1.0), ("frames", 1.0)])
    pings = listener.times("WATCHDOG")
    ready = listener.times("READY")[0]
    assert len(pings) >= 10, "WATCHDOG=1 repeated while the run streams (every 0.1 s)"
    assert gaps(pings, ready + 0.2, ready + 0.9) < 0.3, "pings while frames come"
    assert gaps(pings, ready, ready + 3.0) >= 0.9, "no ping while the loop was blocked"
    assert any(t > ready + 2.2 for t in pings), "pings again once the loop runs"


def test_a_pipeline_without_progress_stops_the_pings(listener: NotifyListener) -> None:
    run_unattended(listener, [("frames", 0.6), ("idle", 1.5), ("frames", 0.6)])
    ready = listener.times("READY")[0]
    pings = listener.times("WATCHDOG")
    # the loop runs, but no record for > stall_s (0.4 s): pings stop ~0.4 s into the idle second and a half
    assert gaps(pings, ready + 0.6, ready + 2.1) >= 0.9
    stalled = [f["STATUS"] for _, f in listener.received if "WATCHDOG" not in f and "STATUS" in f]
    assert any(s.startswith("stalled: no progress") for s in stalled)


def test_stall_limit_covers_a_healthy_run() -> None:
    client = ClientConfig(deadline_ms=1000.0)
    assert stall_limit_s(client, 10.0, 5.0) == pytest.approx(2 * (1.0 + 0.1 + 5.0))
    assert stall_limit_s(ClientConfig(deadline_ms=10.0), 0.0, 0.1) == 10.0


def test_for_run_wraps_only_when_there_is_something_to_do(tmp_path: Path) -> None:
    display = QuietDisplay(io.StringIO())
    kwargs = {"output": OutputSettings(), "client": ClientConfig(), "fps": 10.0, "source_stall_s": 5.0, "meta": {}}
    assert for_run(display, env={}, **kwargs) is display  # type: ignore[arg-type]
    wrapped = for_run(display, env={"STATE_DIRECTORY": str(tmp_path)}, **kwargs)  # type: ignore[arg-type]
    assert isinstance(wrapped, Unattended) and wrapped.status_path == tmp_path / "status.json"
    assert default_path({"STATE_DIRECTORY": f"{tmp_path}:/other"}) == tmp_path / "status.json"
    assert str(default_path({})) == "/var/lib/slimsplit-edge/status.json"


# ============================================================================================ the CLI


def test_the_edge_under_systemd_notifies_logs_a_line_a_second_and_writes_its_status(
    listener: NotifyListener, server: ServerThread, tmp_path: Path
) -> None:
    """A real edge process as systemd runs it: $NOTIFY_SOCKET, $WATCHDOG_USEC, $STATE_DIRECTORY and stdout a file
    named by $JOURNAL_STREAM."""
    journal = tmp_path / "journal.out"
    state = tmp_path / "state"
    with journal.open("wb") as out:
        st = os.fstat(out.fileno())
        env = edge_env(
            NOTIFY_SOCKET=listener.path,
            WATCHDOG_USEC="1500000",
            STATE_DIRECTORY=str(state),
            JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
        )
        cmd = edge_command(server.address, "--fps", "20", "--frames", "70", "--source", "sample")
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    listener.wait_for("STOPPING")
    keys = listener.keys()
    assert keys.count("READY") == 1
    assert keys.count("WATCHDOG") >= 5, listener.received  # 3.5 s of frames, a ping every 0.5 s
    assert keys.index("READY") < keys.index("WATCHDOG") < keys.index("STOPPING")
    statuses = [f["STATUS"] for _, f in listener.received if "STATUS" in f]
    assert statuses[0].startswith("connecting to 127.0.0.1:")
    assert any(re.match(r"last minute: \d+ frames, 100 % in time, modes w\w+ \d+; server up", s) for s in statuses)
    lines = journal.read_text().splitlines()
    ticks = [ln for ln in lines if ln.startswith("t ")]
    assert 3 <= len(ticks) <= 5, lines  # one line a second, not one per frame
    assert "\x1b" not in journal.read_text()
    for line in ticks:
        assert re.match(r"t +\d+\.\d s  est .* modes w\w+ \d+ .*in time +\d+/\d+ .*server up  total \d+ frames", line)
    assert "total 70 frames, 70 answered, 70 in time (100.0 %)" in journal.read_text()
    doc = read_status(state / "status.json")
    assert doc["state"] == "finished" and doc["total"] == {"frames": 70, "answered": 70, "in_time": 70}
    assert doc["server"]["reachable"] is True and doc["last_minute"]["modes"] == {"w16b8": 70}


def test_a_terminal_or_a_pipe_keeps_its_display() -> None:
    out = io.StringIO()
    assert not under_journal(out, {"JOURNAL_STREAM": "1:2"})  # no file behind it
    assert type(make_display(out, live=False)).__name__ == "LineDisplay"
    assert isinstance(make_display(out, journal=True), JournalDisplay)


def test_under_journal_compares_the_stream_with_stdout(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journal(a, env)
        assert not under_journal(b, env)  # stdout redirected elsewhere by the service: not the journal
        assert not under_journal(a, {"JOURNAL_STREAM": "garbage"})


def test_journal_line_format() -> None:
    window = [record(i, latency_ms=10.0 + i) for i in range(9)] + [record(9, status=SKIPPED, reason="limit: K")]
    line = format_journal(12.0, window, (120, 118, 110))
    assert line == (
        "t 12.0 s  est 2.00 Mbit/s  modes w8b4 9  in time 9/10  e2e p50 14.00 ms  skipped 1 (limit)  "
        "server up  total 120 frames, 118 answered, 110 in time (91.7 %)"
    )
    down = [record(i, status=SKIPPED, reason=NOT_CONNECTED) for i in range(5)]
    assert "server DOWN" in format_journal(3.0, down, (5, 0, 0))
    assert (
        format_journal(4.0, [], (5, 0, 0))
        == "t 4.0 s  no frame finished  total 5 frames, 0 answered, 0 in time (0.0 %)"
    )


def test_journal_display_writes_a_line_for_a_quiet_second() -> None:
    out = io.StringIO()
    d = JournalDisplay(out, every=0.05)
    d.start("head")
    d.frame(record(0))
    time.sleep(0.06)
    d.tick()
    time.sleep(0.06)
    d.tick()  # nothing finished in this interval: a line still
    lines = out.getvalue().splitlines()
    assert lines[0] == "head"
    assert "modes w8b4 1" in lines[1] and "total 1 frames" in lines[1]
    assert "no frame finished" in lines[2]


# ====================================================================================== the status file


def test_status_window_keeps_the_last_minute() -> None:
    now = [1000.0]
    w = StatusWindow(clock=lambda: now[0])
    assert w.reachable() is None
    for i in range(30):
        w.add(record(i, mode="w16b8"))
    now[0] += 61.0
    for i in range(30, 40):
        w.add(record(i, mode="w4b2", latency_ms=200.0))  # late: the deadline is 100 ms
    w.add(record(40, status="UNAVAILABLE"))
    w.add(record(41, status=SKIPPED, reason=NOT_CONNECTED))
    lm = w.last_minute(capacity_bps=5e6)
    assert lm["frames"] == 12 and lm["answered"] == 10 and lm["in_time"] == 0 and lm["in_time_rate"] == 0.0
    assert lm["modes"] == {"w4b2": 10, "w8b4": 1} and lm["dropped"] == 1 and lm["errors"] == {"UNAVAILABLE": 1}
    assert lm["skipped"] == {NOT_CONNECTED.split(" (")[0]: 1} and lm["e2e_p50_ms"] == 200.0
    assert lm["link_estimate_bps"] == 2e6 and lm["link_capacity_bps"] == 5e6
    assert w.reachable() is False  # the last word was "not connected"
    w.add(record(42))
    assert w.reachable() is True
    now[0] += 11.0
    assert w.reachable() is False  # no answer for 11 s
    doc = w.document({"target": "srv:1", "every_s": 5.0}, state="streaming")
    assert doc["schema"] == SCHEMA and doc["total"] == {"frames": 43, "answered": 41, "in_time": 31}
    assert doc["server"] == {"reachable": False, "last_answer_age_s": 11.0}
    json.dumps(doc, allow_nan=False)


def test_status_file_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "status.json"
    write_atomic(path, {"schema": SCHEMA, "n": 1})
    write_atomic(path, {"schema": SCHEMA, "n": 2})
    assert read_status(path)["n"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["status.json"], "no temporary file left behind"
    assert path.stat().st_mode & 0o777 == 0o640


def status_doc(written_at: float, state: str = "streaming") -> dict[str, object]:
    w = StatusWindow()
    for i in range(10):
        w.add(record(i))
    meta = {"target": "srv.lan:50051", "model": "m 1", "controller": "mpc (adaptive)", "source": "camera:0"}
    doc = w.document({**meta, "started_at": written_at - 3600, "every_s": 5.0}, state=state)
    doc["written_at"] = written_at
    return doc


def run_status(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = edge_main(["status", *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_slimsplit_edge_status_prints_the_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_atomic(path, status_doc(time.time() - 2))
    code, out, err = run_status("--file", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert re.match(r"slimsplit-edge streaming \(pid \d+\), status written 2 s ago", lines[0])
    assert "srv.lan:50051: reachable" in lines[1]
    assert "controller mpc (adaptive)" in lines[2] and "source camera:0" in lines[2] and "up 60 min" in lines[2]
    assert "10 frames, 10 answered, 10 in time (100.0 %)" in out
    assert "modes        w8b4 10" in out and "estimate 2.00 Mbit/s" in out
    code, out, _ = run_status("--file", str(path), "--json")
    assert code == 0 and json.loads(out)["total"]["frames"] == 10


def test_slimsplit_edge_status_says_how_old_a_stale_file_is(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_atomic(path, status_doc(time.time() - 300))
    code, out, _ = run_status("--file", str(path))
    assert code == 1
    assert out.startswith(f"STALE: {path} was last written 5 min ago (state then: streaming)")
    code, _, err = run_status("--file", str(path), "--json")
    assert code == 1 and "stale: last written 5 min ago" in err
    write_atomic(path, status_doc(time.time(), state="finished"))
    code, out, _ = run_status("--file", str(path))
    assert code == 1 and out.startswith("slimsplit-edge finished")


def test_slimsplit_edge_status_without_a_file(tmp_path: Path) -> None:
    code, out, err = run_status("--file", str(tmp_path / "none.json"))
    assert code == 1 and not out
    assert f"no status file at {tmp_path / 'none.json'}" in err
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = run_status("--file", str(tmp_path / "bad.json"))
    assert code == 1 and "cannot read" in err


def test_status_output_escapes_what_the_file_says(tmp_path: Path) -> None:
    doc = status_doc(time.time())
    doc["target"] = "evil\x1b[2Jhost"
    text = format_status(doc, tmp_path / "s.json")
    assert "\x1b" not in text and "evil?[2Jhost" in text


def test_status_file_flag_and_key() -> None:
    from slimsplit.edge.cli import build_parser, config_from_args, given_flags

    parser = build_parser()
    argv = ["--status-file", "/tmp/x/status.json"]
    config = config_from_args(parser.parse_args(argv), given_flags(parser, argv), parser)
    assert config.output.status_file == Path("/tmp/x/status.json")
    with pytest.raises(Exception, match="status_every_s"):
        OutputSettings(status_every_s=0.0)


# ============================================================================================ memory


def make_video(path: Path, frames: int, size: tuple[int, int] = (320, 240)) -> Path:
    """An MJPG AVI of ``frames`` frames at 30 frames/s: a bright bar moving over a gradient (small per frame)."""
    cv2 = pytest.importorskip("cv2")
    import numpy as np

    w, h = size
    base = np.broadcast_to(np.linspace(0, 200, w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    assert writer.isOpened()
    for i in range(frames):
        image = base.copy()
        x = (i * 3) % w
        image[:, x : x + 12] = (255, 128, 0)
        writer.write(image)
    writer.release()
    return path


def measure_rss(address: str, *args: str, timeout_s: float = 120.0) -> tuple[float, list[tuple[float, float]]]:
    proc = subprocess.Popen(edge_command(address, "--quiet", *args), env=edge_env(), stdout=subprocess.PIPE)
    samples = sample_rss(proc, 0.05)
    out, _ = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, out.decode()[-2000:]
    peak = max(mb for _, mb in samples)
    print(f"edge RSS {' '.join(args)}: peak {peak:.1f} MB over {len(samples)} samples")
    return peak, samples


@pytest.mark.parametrize("source", ["sample", "video"])
def test_edge_rss_stays_below_the_limit(server: ServerThread, tmp_path: Path, source: str) -> None:
    if source == "video":
        source = str(make_video(tmp_path / "clip.avi", 300))
        args = ("--source", source, "--fps", "0", "--frames", "300")
    else:
        args = ("--source", "sample", "--fps", "0", "--frames", "400")
    peak, _ = measure_rss(server.address, *args)
    assert peak < RSS_LIMIT_MB, f"the edge took {peak:.1f} MB with {source}"


@pytest.mark.slow
@pytest.mark.timeout(SOAK_S + 300)  # the 30-minute form too (the suite's limit is 300 s a test)
@pytest.mark.parametrize("source", ["sample", "video"])
def test_edge_rss_does_not_grow_over_a_long_run(server: ServerThread, tmp_path: Path, source: str) -> None:
    """A paced run of SOAK_S seconds at 30 frames/s: after a warm-up of a quarter of it, the RSS at the end is
    within 5 % of the RSS just after the warm-up (medians of a tenth of the run each)."""
    fps = 30
    frames = int(SOAK_S * fps)
    if source == "video":  # a file ends: one as long as the run (small frames: about 100 MB for 30 minutes)
        source = str(make_video(tmp_path / "clip.avi", frames + fps, (160, 120)))
    args = ["--source", source, "--fps", str(fps), "--frames", str(frames)]
    peak, samples = measure_rss(server.address, *args, timeout_s=SOAK_S + 120)
    duration = samples[-1][0]
    warm = duration * 0.25
    after = [mb for t, mb in samples if warm <= t < warm + duration * 0.1]
    end = [mb for t, mb in samples if t >= duration * 0.9]
    growth = statistics.median(end) / statistics.median(after) - 1.0
    print(
        f"edge RSS soak {source}: {statistics.median(after):.1f} MB after warm-up, {statistics.median(end):.1f} MB "
        f"at the end ({100 * growth:+.1f} %), peak {peak:.1f} MB, {duration:.0f} s"
    )
    assert peak < RSS_LIMIT_MB
    assert growth < 0.05, f"RSS grew {100 * growth:.1f} % over {duration:.0f} s"
