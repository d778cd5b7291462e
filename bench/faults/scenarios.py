"""The fault scenarios: each starts a server, runs the good client beside a fault, and returns a
:class:`~bench.faults.figures.ScenarioResult`.

Every scenario but ``fuzz_atheris`` follows :func:`_served`: a fresh server process (its backend per scenario:
``null`` where the tail does not matter, ONNX Runtime where it does), the good client's reference classes from the
quiet server, a sampler of the server's RSS/FDs/threads/in-flight every second, the good client at 10 Hz with a
100 ms deadline, then the fault (misbehaving clients are :mod:`bench.faults.worker` processes). The durations and
counts come from a :class:`Plan` (``--short``, the long form, or a test's tiny one).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.faults.figures import ScenarioResult, growth
from bench.faults.good import GoodClient, GoodFrame, good_frames, model_name, reference_classes
from bench.faults.server import Sampler, ServerProc
from bench.faults.stall import ENV as STALL_ENV

REPOSITORY = Path(__file__).resolve().parents[2]
Tick = Callable[[str, float], None]  # (what is happening, fraction of the scenario done)


@dataclass(frozen=True)
class Plan:
    """How long and how many, per scenario."""

    attack_s: float = 20.0
    soak_s: float = 300.0
    soak_interval_s: float = 10.0
    frame_examples: int = 2000
    atheris_runs: int = 200_000
    kills: int = 2
    stall_s: float = 5.0
    outage_s: float = 10.0
    idle_n: int = 1000
    unary_rate: float = 4000.0
    stream_flood: tuple[int, int] = (200, 32)
    unread_n: int = 50
    slow_n: int = 20

    @classmethod
    def long(cls) -> Plan:
        return cls(attack_s=120.0, soak_s=1800.0, frame_examples=20_000, atheris_runs=2_000_000, kills=5)


@dataclass
class Context:
    plan: Plan
    tick: Tick = lambda what, frac: None
    frames: list[GoodFrame] = field(default_factory=list)
    model: str = ""
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="slimsplit-faults-")))

    def __post_init__(self) -> None:
        if not self.frames:
            self.frames = good_frames()
            self.model = model_name()


@dataclass
class Env:
    """What a scenario body works with."""

    ctx: Context
    server: ServerProc
    good: GoodClient
    sampler: Sampler
    result: ScenarioResult
    span_s: float  # the body's planned length, for progress

    def wait(self, seconds: float, what: str, start_s: float = 0.0) -> bool:
        """Sleep ``seconds`` (in steps, reporting progress); False as soon as the server has died."""
        end = time.monotonic() + seconds
        while True:
            if self.server.check_alive() is not None:
                return False
            left = end - time.monotonic()
            elapsed = start_s + seconds - max(left, 0.0)
            self.ctx.tick(what, min(1.0, elapsed / self.span_s) if self.span_s else 1.0)
            if left <= 0:
                return True
            time.sleep(min(0.25, left))


def start_worker(ctx: Context, kind: str, target: str, seconds: float, **kw: Any) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.faults.worker", kind, "--target", target, "--seconds", f"{seconds:g}"]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPOSITORY)


def collect(p: subprocess.Popen[str], result: ScenarioResult, label: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Wait for a worker and fold its counts into ``result`` (``label`` prefixes its inputs and outcomes)."""
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        result.notes.append(f"{label}: the worker did not finish in {timeout_s:g} s (killed)")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        result.notes.append(f"{label}: the worker wrote no result (rc {p.returncode}): {err[-600:]}")
        result.error = result.error or f"{label} worker failed"
        return {}
    doc: dict[str, Any] = json.loads(lines[-1])
    for key, n in doc["counts"].items():
        result.inputs[f"{label}: {key}"] = int(n)
    if doc["statuses"]:
        result.outcomes[f"{label}: statuses"] = dict(sorted(doc["statuses"].items()))
    result.server_errors += int(doc["server_errors"])
    if doc.get("server_errors_by"):
        result.outcomes[f"{label}: server errors by RPC and status"] = dict(sorted(doc["server_errors_by"].items()))
    result.attacker_unanswered += int(doc["unanswered"])
    result.examples += doc["examples"][: max(0, 10 - len(result.examples))]
    if doc["counts"].get("worker failed"):
        result.error = result.error or f"{label} worker failed"
    return doc


def _served(
    ctx: Context,
    name: str,
    description: str,
    body: Callable[[Env], None],
    *,
    backend: str,
    span_s: float,
    needs_in_time: bool = False,
    server_args: tuple[str, ...] = (),
    server_env: dict[str, str] | None = None,
    good_target: Callable[[ServerProc], str] | None = None,
) -> ScenarioResult:
    r = ScenarioResult(name, description, backend=backend, needs_in_time=needs_in_time)
    t0 = time.monotonic()
    server = ServerProc(backend=backend, extra_args=server_args, env=server_env)
    sampler: Sampler | None = None
    try:
        ctx.tick("starting the server", 0.0)
        server.start()
        reference = reference_classes(server.address, ctx.model, ctx.frames)
        r.inputs["good frames (distinct)"] = len(ctx.frames)
        target = good_target(server) if good_target is not None else server.address
        with Sampler(server) as sampler, GoodClient(target, ctx.model, ctx.frames, reference) as good:
            env = Env(ctx, server, good, sampler, r, span_s)
            env.wait(1.0, "good client warming up")
            body(env)
            good.stop()
            if good.error is not None:
                r.error = f"good client: {good.error!r}"
            r.good = good.tally()
            r.inputs["good frames sent"] = r.good.sent
    except Exception as exc:  # the harness's own failure: reported as such, the run goes on
        r.error = f"{type(exc).__name__}: {exc}"
        r.notes.append(traceback.format_exc(limit=4)[-1500:])
    finally:
        server.check_alive()
        r.crashes = server.crashes
        if server.exit_codes:
            r.notes.append(f"server exit codes: {server.exit_codes}; stderr ends: {server.stderr_tail(8)[-800:]}")
        r.outcomes["server log"] = server.log_counts()
        server.close()
        if sampler is not None and sampler.samples:
            r.rss_start_mb = sampler.first_rss_mb
            r.rss_peak_mb = sampler.peak_rss_mb
            r.outcomes["server peak"] = {
                "fds": max(s["fds"] for s in sampler.samples),
                "threads": max(s["threads"] for s in sampler.samples),
                "in_flight": max(s.get("in_flight", 0.0) for s in sampler.samples),
            }
        r.wall_s = round(time.monotonic() - t0, 1)
    return r


# --------------------------------------------------------------------------------------------------- scenarios
def fuzz_raw(ctx: Context) -> ScenarioResult:
    s = ctx.plan.attack_s

    def body(env: Env) -> None:
        p = start_worker(ctx, "raw-fuzz", env.server.address, s, concurrency=8)
        env.wait(s, "random bodies on every RPC")
        collect(p, env.result, "raw")

    return _served(
        ctx, "fuzz_raw",
        "random and mutated bytes as the body of every RPC (Infer, Describe, health Check, InferStream, reflection; "
        "identity serializers), oversized and huge-string messages, and streams of good frames ending in garbage",
        body, backend="null", span_s=s + 2, needs_in_time=True,
    )  # fmt: skip


def fuzz_frames(ctx: Context) -> ScenarioResult:
    n = ctx.plan.frame_examples

    def body(env: Env) -> None:
        p = start_worker(ctx, "frame-fuzz", env.server.address, 0, n=n)
        start = time.monotonic()
        while p.poll() is None and env.wait(1.0, f"{n} hypothesis frames", time.monotonic() - start):
            pass
        collect(p, env.result, "frames", timeout_s=600)

    return _served(
        ctx, "fuzz_frames",
        "hypothesis-generated FeatureFrames: protocol version, model and mode names (odd, long, escapes), top_k, and "
        "features as hand-built codec headers (every field), mutated valid frames, valid frames, random bytes; on "
        "streams of 50 (each frame must get one reply) and every 5th as a unary call",
        body, backend="onnxruntime", span_s=max(10.0, n / 200), needs_in_time=True,
    )  # fmt: skip


def fuzz_atheris(ctx: Context) -> ScenarioResult:
    r = ScenarioResult(
        "fuzz_atheris",
        "coverage-guided fuzzing (atheris/libFuzzer) of slimsplit.codec peek_header + decode_features, default and "
        "bundle limits, seeded with valid frames of every width/bits/coder",
        backend="-",
        rss_bound_mb=None,
    )
    t0 = time.monotonic()
    try:
        import atheris  # noqa: F401
    except ImportError as exc:
        r.notes.append(f"atheris is not installed ({exc}); `pip install atheris` (needs a wheel for this Python)")
        r.outcomes["atheris"] = "not installed"
        return r
    from bench.faults.atheris_decode import write_corpus

    corpus = ctx.tmp / "atheris-corpus"
    write_corpus(corpus)
    runs = ctx.plan.atheris_runs
    argv = [sys.executable, "-m", "bench.faults.atheris_decode", f"-atheris_runs={runs}", str(corpus)]
    last = ""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPOSITORY) as p:
        assert p.stdout is not None
        for line in p.stdout:
            m = re.match(r"#(\d+)", line)
            if m:
                ctx.tick("atheris", min(1.0, int(m.group(1)) / runs))
            if not line.startswith("INFO: Instrumenting"):
                last = (last + line)[-3000:]
    done = re.search(r"Done (\d+) (?:runs )?in (\d+) second", last)
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", last)
    r.inputs["decode inputs (atheris runs)"] = int(done.group(1)) if done else 0
    r.outcomes["atheris exit status"] = p.returncode
    if cov:
        r.outcomes["coverage (edges, features, corpus)"] = [int(x) for x in cov[-1]]
    if p.returncode != 0:
        r.crashes = 1
        r.examples.append(last[-1500:])
    r.wall_s = round(time.monotonic() - t0, 1)
    return r


def server_kill(ctx: Context) -> ScenarioResult:
    kills = ctx.plan.kills
    up_s, down_s, after_s = 3.0, 1.0, 4.0
    span = kills * (up_s + down_s + after_s + 2)

    def body(env: Env) -> None:
        r, good = env.result, env.good
        windows = []
        for k in range(kills):
            at = k * (up_s + down_s + after_s + 2)
            if not env.wait(up_s, f"serving (kill {k + 1}/{kills} next)", at):
                return
            t_kill = good.now()
            env.server.kill()
            time.sleep(down_s)
            env.server.start()
            t_back = good.now()
            env.wait(after_s, "restarted; the good client must recover", at + up_s + down_s)
            windows.append((t_kill, t_back))
        env.good.stop()  # every frame settled before it is counted
        r.inputs["SIGKILLs mid-stream"] = len(windows)
        events = good.events
        per_kill = []
        for t_kill, t_back in windows:
            recovered = next((e.t_s for e in events if e.t_s >= t_back and e.status == "OK"), None)
            lost = good.counts_between(t_kill - 0.5, recovered if recovered is not None else t_back + after_s)
            per_kill.append({
                "server down s": round(t_back - t_kill, 2),
                "frames not answered OK around the kill": sum(v for k2, v in lost.items() if k2 != "OK"),
                "their statuses": lost,
                "first OK after the restart, s": None if recovered is None else round(recovered - t_back, 2),
            })  # fmt: skip
        r.outcomes["per kill"] = per_kill
        r.outcomes["all frames by status"] = good.counts_between(0, 1e9)

    return _served(
        ctx, "server_kill",
        "the server SIGKILLed while the good client streams, restarted on the same port a second later; the good "
        "client must reconnect by itself (frames lost vs answered, time to the first answer after the restart)",
        body, backend="onnxruntime", span_s=span,
    )  # fmt: skip


def stalled_backend(ctx: Context) -> ScenarioResult:
    flag = ctx.tmp / "stall.flag"
    stall_s = ctx.plan.stall_s
    before_s, after_s = 3.0, 6.0

    def body(env: Env) -> None:
        r, good = env.result, env.good
        env.wait(before_s, "serving")
        t_stall = good.now()
        flag.write_text("stall")
        env.wait(stall_s, "tails stalled", before_s)
        flag.unlink()
        t_free = good.now()
        env.wait(after_s, "tails released", before_s + stall_s)
        env.good.stop()  # every frame settled before it is counted
        r.inputs["tail stalls"] = 1
        r.inputs["stall s"] = int(stall_s)
        events = good.events
        recovered = next((e.t_s for e in events if e.t_s >= t_free and e.status == "OK"), None)
        r.outcomes["frames before the stall"] = good.counts_between(0, t_stall)
        r.outcomes["frames during the stall"] = good.counts_between(t_stall, t_free)
        r.outcomes["frames after the stall"] = good.counts_between(t_free, 1e9)
        r.outcomes["first OK after the release, s"] = None if recovered is None else round(recovered - t_free, 2)
        late = good.counts_between(t_free + 2.0, 1e9)
        r.outcomes["in-time rate from 2 s after the release"] = round(late.get("OK", 0) / max(1, sum(late.values())), 4)

    return _served(
        ctx, "stalled_backend",
        f"every tail call sleeps for {stall_s:g} s (a hung accelerator: a backend that waits on a flag file); frames "
        "in the stall must fail with a reason, the server must not crash or queue without bound, and serve in time "
        "again soon after",
        body, backend="stall", span_s=before_s + stall_s + after_s, server_env={STALL_ENV: str(flag)},
    )  # fmt: skip


def _flood(ctx: Context, name: str, description: str, kind: str, backend: str, **kw: Any) -> ScenarioResult:
    s = ctx.plan.attack_s

    def body(env: Env) -> None:
        p = start_worker(ctx, kind, env.server.address, s, **kw)
        t_start = env.good.now()
        env.wait(s, description.split(":")[0])
        env.good.stop()  # every frame settled before it is counted
        doc = collect(p, env.result, kind)
        env.result.outcomes["good client during the attack"] = env.good.counts_between(t_start, t_start + s)
        if kind == "unary-flood" and doc:
            env.result.outcomes["flood calls/s achieved"] = doc["counts"].get("calls_per_s", 0)

    return _served(ctx, name, description, body, backend=backend, span_s=s + 2, needs_in_time=True)


def unary_flood(ctx: Context) -> ScenarioResult:
    rate = ctx.plan.unary_rate
    return _flood(
        ctx, "unary_flood",
        f"unary flood: one process calls Infer at up to {rate:g}/s (64 concurrent calls, valid frames, 1 s deadline)",
        "unary-flood", "onnxruntime", rate=rate, concurrency=64,
    )  # fmt: skip


def stream_flood(ctx: Context) -> ScenarioResult:
    n, k = ctx.plan.stream_flood
    return _flood(
        ctx, "stream_flood", f"stream flood: one process keeps {n} streams with {k} frames in flight each",
        "stream-flood", "onnxruntime", n=n, in_flight=k,
    )  # fmt: skip


def unread_replies(ctx: Context) -> ScenarioResult:
    n = ctx.plan.unread_n
    return _flood(
        ctx, "unread_replies",
        f"unread replies: {n} streams write frames as fast as flow control allows and never read a reply (server RSS "
        "must stay bounded)",
        "unread", "null", n=n,
    )  # fmt: skip


def slow_clients(ctx: Context) -> ScenarioResult:
    n = ctx.plan.slow_n
    return _flood(
        ctx, "slow_clients",
        f"slow clients: {n} streams write 100 frames/s and read 5 replies/s; {n} connections send the HTTP/2 "
        "preface one byte a second",
        "slow", "onnxruntime", n=n,
    )  # fmt: skip


def idle_connections(ctx: Context) -> ScenarioResult:
    n, s = ctx.plan.idle_n, ctx.plan.attack_s

    def body(env: Env) -> None:
        tcp = start_worker(ctx, "idle-tcp", env.server.address, s, n=n)
        chans = start_worker(ctx, "idle-channels", env.server.address, s, n=n)
        t_start = env.good.now()
        env.wait(s + 5, "idle connections held")
        collect(tcp, env.result, "tcp", timeout_s=120)
        env.good.stop()  # every frame settled before it is counted
        collect(chans, env.result, "channels", timeout_s=180)
        env.result.outcomes["good client during the attack"] = env.good.counts_between(t_start, 1e9)

    return _served(
        ctx, "idle_connections",
        f"{n} TCP connections that never send the HTTP/2 preface and {n} gRPC channels (one connection each) that "
        f"connect, make one Describe call and stay idle, held {s:g} s",
        body, backend="null", span_s=s + 7, needs_in_time=True,
    )  # fmt: skip


def link_outage(ctx: Context) -> ScenarioResult:
    good_s, outage_s, after_s = 6.0, ctx.plan.outage_s, 10.0
    trace = ctx.tmp / "outage.trace"
    rate_pkts_per_ms = 10e6 / 8 / 1500 / 1000  # 10 Mbit/s

    def ramp(t0_ms: float, t1_ms: float) -> np.ndarray[Any, np.dtype[np.int64]]:
        n = int((t1_ms - t0_ms) * rate_pkts_per_ms)
        return np.floor(np.linspace(t0_ms, t1_ms, n, endpoint=False)).astype(np.int64) + 1

    from slimsplit.link.trace import write_mahimahi

    end_ms = (good_s + outage_s + after_s + 600) * 1000
    ts = np.concatenate([ramp(0, good_s * 1000), ramp((good_s + outage_s) * 1000, end_ms)])
    write_mahimahi(ts, trace)
    box: dict[str, Any] = {}

    def proxy_for(server: ServerProc) -> str:
        p = subprocess.Popen(
            [sys.executable, "-m", "slimsplit.apps.link_cli", "proxy", "--upstream", server.address,
             "--listen", "127.0.0.1:0", "--uplink", str(trace)],
            stdout=subprocess.PIPE, stderr=box.setdefault("log", open(ctx.tmp / "proxy.log", "w")),  # noqa: SIM115
            text=True, cwd=REPOSITORY,
        )  # fmt: skip
        assert p.stdout is not None
        line = p.stdout.readline()
        box["proxy"], box["t0"] = p, time.monotonic()
        m = re.match(r"shaping proxy (\S+:\d+) ", line)
        if m is None:
            raise RuntimeError(
                f"the shaping proxy did not start: {line!r} {(ctx.tmp / 'proxy.log').read_text()[-800:]}"
            )
        return m.group(1)

    def body(env: Env) -> None:
        r, good = env.result, env.good
        t_out = box["t0"] + good_s - good.t0  # link time -> good client time
        t_back = t_out + outage_s
        env.wait(max(0.0, t_back + after_s - good.now()), "10 s outage on the uplink")
        events = good.events
        recovered = next((e.t_s for e in events if e.t_s >= t_back and e.status == "OK"), None)
        env.good.stop()  # every frame settled before it is counted
        r.inputs["uplink outages"] = 1
        r.inputs["outage s"] = int(outage_s)
        r.outcomes["frames before the outage"] = good.counts_between(0, t_out)
        r.outcomes["frames sent in the outage"] = good.counts_between(t_out, t_back)
        r.outcomes["frames after the outage"] = good.counts_between(t_back, 1e9)
        r.outcomes["first OK after the link came back, s"] = None if recovered is None else round(recovered - t_back, 2)
        late = good.counts_between(t_back + 2.0, 1e9)
        r.outcomes["in-time rate from 2 s after the outage"] = round(late.get("OK", 0) / max(1, sum(late.values())), 4)

    try:
        return _served(
            ctx, "link_outage",
            f"the good client through the shaping proxy (slimsplit-link proxy, a 10 Mbit/s Mahimahi trace written to a "
            f"temp dir) with a {outage_s:g} s uplink outage; frames in it must fail with a reason, service must resume",
            body, backend="onnxruntime", span_s=good_s + outage_s + after_s, good_target=proxy_for,
        )  # fmt: skip
    finally:
        proxy = box.get("proxy")
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
            box["log"].close()


def soak(ctx: Context) -> ScenarioResult:
    s, interval = ctx.plan.soak_s, ctx.plan.soak_interval_s

    def body(env: Env) -> None:
        addr = env.server.address
        workers = [
            ("load-1", start_worker(ctx, "load", addr, s, n=4, rate=40, seed=1)),
            ("load-2", start_worker(ctx, "load", addr, s, n=4, rate=40, seed=2)),
            ("mixed", start_worker(ctx, "mixed", addr, s, rate=4, seed=3)),
        ]
        env.wait(s, "soak: good, load and bad clients")
        for label, p in workers:
            collect(p, env.result, label, timeout_s=120)
        step = max(1, round(interval / env.sampler.interval_s))
        series = env.sampler.samples[::step]
        warmup = max(1, len(series) // 5)
        env.result.samples = series
        env.result.rss_growth = growth([x["rss_mb"] for x in series], warmup)
        env.result.fd_growth = growth([x["fds"] for x in series], warmup)
        env.result.outcomes["samples (every s)"] = interval
        env.result.outcomes["warm-up samples"] = warmup
        env.result.outcomes["threads first/last after warm-up"] = [
            series[min(warmup, len(series) - 1)]["threads"], series[-1]["threads"]
        ] if series else []  # fmt: skip

    return _served(
        ctx, "soak",
        f"{s:g} s of mixed traffic: the good client, two load clients (4 streams, 40 frames/s each, every frame must "
        "be answered) and one bad client (garbage calls, streams cancelled half-way, unread streams, idle "
        f"connections); RSS, FDs, threads and the in-flight gauge sampled every {interval:g} s",
        body, backend="onnxruntime", span_s=s + 2, needs_in_time=True,
    )  # fmt: skip


SCENARIOS: dict[str, Callable[[Context], ScenarioResult]] = {
    "fuzz_raw": fuzz_raw,
    "fuzz_frames": fuzz_frames,
    "fuzz_atheris": fuzz_atheris,
    "server_kill": server_kill,
    "stalled_backend": stalled_backend,
    "unary_flood": unary_flood,
    "stream_flood": stream_flood,
    "unread_replies": unread_replies,
    "idle_connections": idle_connections,
    "slow_clients": slow_clients,
    "link_outage": link_outage,
    "soak": soak,
}
