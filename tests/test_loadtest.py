"""``slimsplit-loadtest``: many clients, each over its own emulated link, against a ``slimsplit-server`` process it
starts on 127.0.0.1 (or a core in its own process); every frame accounted for, the slow link's clients send less,
and user errors are one line and exit 2. The started server runs with TLS + mTLS + a devices file by default, each
client its own device (certificate and token), named in the table and the JSON."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slimsplit.apps.loadtest import main
from slimsplit.apps.loadtest.aggregate import aggregate, collect, load_exit_status
from slimsplit.apps.loadtest.plan import plan_links
from slimsplit.apps.loadtest.report import format_report
from slimsplit.edge.pipeline import RunReport
from slimsplit.errors import ConfigError, Unavailable
from slimsplit.records import FrameRecord, ServerTiming, summarize

FPS = 10
SECONDS = 2


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, str, dict[str, Any]]:
    path = tmp_path_factory.mktemp("load") / "load.json"
    code, out, err = run_cli(
        "--start-server",
        "--clients",
        "3",
        "--link",
        "2mbit",
        "500kbit",
        "--seconds",
        str(SECONDS),
        "--fps",
        str(FPS),
        "--controller",
        "mpc",
        "--every",
        "0.5",
        "--json-out",
        str(path),
    )
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return code, out, err, doc


def test_three_clients_alternate_links_and_account_for_every_frame(
    mixed: tuple[int, str, str, dict[str, Any]],
) -> None:
    code, out, err, doc = mixed
    assert code == 0, err
    clients = doc["clients"]
    assert [c["index"] for c in clients] == [0, 1, 2]
    assert [c["link"] for c in clients] == ["2mbit", "500kbit", "2mbit"]
    assert [c["offset_s"] for c in clients] == [0.0, 7.0, 14.0]  # the default stride
    assert all("127.0.0.1" in doc["meta"]["target"] for _ in clients)
    # TLS + mTLS + a token by default, each client its own device
    devices = ["loadtest-000", "loadtest-001", "loadtest-002"]
    assert [c["device_id"] for c in clients] == devices == doc["meta"]["device_ids"]
    assert doc["meta"]["security"] == "mtls+token"
    assert "security: TLS + mTLS + a bearer token per client (devices loadtest-000..loadtest-002" in out
    for c in clients:
        assert c["error"] is None
        assert c["frames"] == FPS * SECONDS
        assert c["summary"]["frames"] == FPS * SECONDS
        assert c["hits"] + c["late"] + c["skipped"] + c["dropped"] + c["errors"] == c["frames"]
        assert c["summary"]["ok"] == c["hits"] + c["late"]
        assert c["summary"]["ok"] > 0
        assert c["rtt_ms"] is not None and c["rtt_ms"] > 0
    overall = doc["overall"]
    assert overall["clients"] == 3 and overall["failed_clients"] == 0
    assert overall["frames"] == 3 * FPS * SECONDS
    assert overall["hits"] == sum(c["hits"] for c in clients)
    assert overall["answered"] == sum(c["summary"]["ok"] for c in clients)
    assert overall["server_ms"]["p50"] is not None and overall["server_ms"]["p50"] > 0
    assert overall["server_ms"]["p99"] >= overall["server_ms"]["p50"]
    assert sum(overall["by_status"].values()) == overall["frames"] - overall["answered"]
    # the table: a header, one row per client, the overall row and the server timing
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("client") and "in time" in line)
    rows = [line.split() for line in lines[header + 2 : header + 5]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert [r[1] for r in rows] == devices
    assert [r[2] for r in rows] == ["2mbit", "500kbit", "2mbit"]
    assert [r[4] for r in rows] == [str(FPS * SECONDS)] * 3
    assert any(line.split()[:1] == ["all"] and str(3 * FPS * SECONDS) in line.split() for line in lines)
    assert "server timing (from the predictions): total p50" in out
    # constant 2 and 0.5 Mbit/s links allow every frame in some mode; the hits split by what they allowed
    for c in clients:
        check = c["link_check"]
        assert check["frames"] == check["allowed"] == FPS * SECONDS
        assert check["hits_allowed"] == check["hits"] == c["hits"]
    assert overall["allowed"] == 3 * FPS * SECONDS and overall["hits_allowed"] == overall["hits"]
    assert [r[-2] for r in rows] == [str(FPS * SECONDS)] * 3  # the "allowed" column
    assert f"the emulated links allowed {3 * FPS * SECONDS} of {3 * FPS * SECONDS} frames" in out
    assert f"/{3 * FPS * SECONDS}" in err  # the progress line
    assert "Traceback" not in err


def test_mpc_sends_fewer_bytes_per_frame_over_a_much_slower_link(tmp_path: Path) -> None:
    path = tmp_path / "load.json"
    code, _out, err = run_cli(
        "--start-server",
        "--no-tls",
        "--server-backend",
        "null",
        "--clients",
        "2",
        "--link",
        "2mbit",
        "32kbit",
        "--seconds",
        str(SECONDS),
        "--fps",
        str(FPS),
        "--deadline-ms",
        "300",
        "--controller",
        "mpc",
        "--quiet",
        "--json-out",
        str(path),
    )
    assert code in (0, 1), err  # the 32 kbit/s client may drop a frame; the bytes are what this test is about
    doc = json.loads(path.read_text(encoding="utf-8"))
    fast, slow = doc["clients"]
    assert doc["meta"]["security"] == "plaintext" and fast["device_id"] is None  # --no-tls
    assert fast["link"] == "2mbit" and slow["link"] == "32kbit"
    assert fast["summary"]["bytes_per_frame"] > 0 and slow["summary"]["bytes_per_frame"] > 0
    assert slow["summary"]["bytes_per_frame"] < fast["summary"]["bytes_per_frame"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--start-server", "--clients", "0"], "--clients must be in 1..512, got 0"),
        (["--start-server", "--link", "2mbit", "/nonexistent/cell.trace"], "/nonexistent/cell.trace"),
        ([], "give --server HOST:PORT, --start-server or --in-process"),
        (["--server", "127.0.0.1:1", "--start-server"], "--server and --start-server exclude each other"),
        (["--start-server", "--in-process"], "--start-server and --in-process exclude each other"),
        (["--in-process", "--link", "2mbit"], "--in-process has no network to emulate"),
        (["--server", "127.0.0.1:http"], "port 'http' is not a number"),
        (["--start-server", "--seconds", "0"], "--seconds must be > 0"),
        (["--start-server", "--controller", "oracle"], "offline"),
        (["--start-server", "--controller", "mpc", "--mode", "w8b4"], "fixes the mode"),
        (["--start-server", "--bundle", "/nonexistent/bundle"], "/nonexistent/bundle"),
        (
            ["--start-server", "--tls-ca", "ca.crt"],
            "--start-server makes its own credentials; --tls-ca: for --server only",
        ),
        (["--in-process", "--token-file", "t"], "--in-process has no gRPC"),
        (["--server", "127.0.0.1:1", "--no-tls", "--tls-ca", "ca.crt"], "--no-tls and --tls-ca exclude each other"),
        (["--server", "127.0.0.1:1", "--tls-cert", "d.crt"], "--tls-cert and --tls-key go together"),
        (["--server", "127.0.0.1:1", "--credentials", "d", "--token-file", "t"], "exclude each other"),
        (["--in-process", "--transmission", "planes"], "--in-process carry whole frames"),
        (["--server", "127.0.0.1:1", "--transmission", "planes", "--sweep", "clients=1"], "--sweep (unary Infer)"),
        (["--server", "127.0.0.1:1", "--controller", "planes"], "add --transmission planes"),
    ],
)
def test_usage_errors_are_one_clear_line_and_exit_2(argv: list[str], fragment: str) -> None:
    code, out, err = run_cli(*argv)
    assert code == 2
    assert out == ""
    assert fragment in err
    assert err.count("\n") == 1 and err.startswith("slimsplit-loadtest: error: ")


def test_a_missing_trace_is_named_as_not_found() -> None:
    code, _out, err = run_cli("--start-server", "--link", "/nonexistent/cell.trace")
    assert code == 2
    assert "/nonexistent/cell.trace: trace file not found" in err


def test_the_console_entry_has_no_traceback_and_imports_no_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "slimsplit.apps.loadtest", "--start-server", "--clients", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--clients must be" in proc.stderr
    assert "Traceback" not in proc.stderr
    code = (
        "import sys\n"
        "import slimsplit.apps.loadtest as lt\n"
        "lt.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'rich', 'tqdm'}\n"
        "             or m.startswith('slimsplit.server'))\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "clean"


def test_clients_get_their_own_links_and_a_failed_client_is_a_row() -> None:
    plans = plan_links(["2mbit", "none"], 3, stride_s=5.0)
    assert [p.link_spec for p in plans] == ["2mbit", "none", "2mbit"]
    assert [p.offset_s for p in plans] == [0.0, 0.0, 10.0]  # an unshaped client has no trace position
    assert plans[1].link is None and plans[0].link is not None and plans[2].link is not None
    assert plans[0].link is not plans[2].link
    assert plans[2].link.config.start_offset_s == 10.0
    results = [
        FrameRecord(
            1, 0, "w8b4", payload_bytes=100, latency_ms=10.0, deadline_ms=100.0, server=ServerTiming(total_ms=2.0)
        ),
        FrameRecord(2, 1, "", status="SKIPPED", reason="in-flight limit: 4", deadline_ms=100.0),
        FrameRecord(3, 2, "w8b4", status="DEADLINE_EXCEEDED", payload_bytes=100, deadline_ms=100.0),
        FrameRecord(
            4, 3, "w2b1", payload_bytes=30, latency_ms=150.0, deadline_ms=100.0, server=ServerTiming(total_ms=4.0)
        ),
    ]
    ran = (RunReport(results=results, wall_s=1.0), summarize(results, 1.0))
    clients = collect(plans, [ran, Unavailable("cannot reach 127.0.0.1:1"), ran])
    assert clients[0].accounting() == {"frames": 4, "hits": 1, "late": 1, "skipped": 1, "dropped": 1, "errors": 0}
    assert clients[1].summary is None and "cannot reach" in clients[1].error
    overall = aggregate(clients, 2.0)
    assert (overall.frames, overall.answered, overall.hits, overall.failed_clients) == (8, 4, 2, 1)
    assert overall.delivered_fps == 2.0
    assert overall.by_status == {"SKIPPED": 2, "DEADLINE_EXCEEDED": 2}
    assert overall.server_ms.p50 == 3.0
    text = format_report(clients, overall)
    assert "failed: cannot reach 127.0.0.1:1" in text
    assert "1 of 3 clients failed" in text
    assert load_exit_status(clients) == 1
    assert load_exit_status(clients[1:2]) == 3
    assert load_exit_status(clients[:1]) == 0


def test_an_unreachable_server_fails_every_client_and_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = run_cli(
        "--server", f"127.0.0.1:{port}", "--clients", "2", "--link", "none", "--connect-timeout", "0.5", "--quiet"
    )
    assert code == 3
    assert "2 of 2 clients failed" in out
    assert "no frames ran" in out
    assert err.count(f"127.0.0.1:{port}") >= 2


def test_a_started_server_is_a_process_of_its_own_and_this_process_imports_no_server() -> None:
    """--start-server runs slimsplit-server through its entry point; the load tester imports nothing of the server
    but its security package (the development PKI writes the devices file with it)."""
    code = (
        "import sys\n"
        "from slimsplit.apps.loadtest import main\n"
        "status = main(['--start-server', '--server-backend', 'null', '--clients', '2', '--link', 'none',\n"
        "               '--seconds', '0.5', '--fps', '10', '--quiet'])\n"
        "bad = sorted(m for m in sys.modules if m.startswith('slimsplit.server')\n"
        "             and m != 'slimsplit.server' and not m.startswith('slimsplit.server.security'))\n"
        "assert not bad, bad\n"
        "print('status', status)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "status 0", proc.stdout + proc.stderr
    assert "slimsplit-server process (null, max batch 8)" not in proc.stdout  # --quiet: the table only
    assert "every frame answered" in proc.stdout


def test_a_server_that_does_not_start_is_shown_with_its_stderr() -> None:
    code, out, err = run_cli("--start-server", "--server-backend", "no-such-backend", "--clients", "1", "--quiet")
    assert code == 2
    assert out == ""
    assert "the server did not start: slimsplit-server exited with status 2 before it was ready" in err
    assert "its stderr ends:" in err and "no-such-backend" in err  # the server's own argparse message
    assert "Traceback" not in err


def test_in_process_clients_talk_to_a_core_without_grpc(tmp_path: Path) -> None:
    path = tmp_path / "load.json"
    code, out, err = run_cli(
        "--in-process",
        "--server-backend",
        "null",
        "--clients",
        "2",
        "--seconds",
        "1",
        "--fps",
        str(FPS),
        "--json-out",
        str(path),
    )
    assert code == 0, err
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["meta"]["target"] == "in-process" and doc["meta"]["links"] == ["none"]
    assert doc["meta"]["server"] == "in-process core (null, max batch 8)"
    assert doc["meta"]["security"] == "none" and doc["meta"]["device_ids"] == [None, None]  # no gRPC: no TLS
    assert doc["overall"]["answered"] == doc["overall"]["frames"] == 2 * FPS
    assert all(c["link_check"] is None and c["error"] is None for c in doc["clients"])
    assert "clients -> in-process" in out


def test_credentials_folder_gives_each_client_its_own_device(tmp_path: Path) -> None:
    """--server --credentials DIR: client i is the i-th device of DIR (as make_dev_pki or slimsplit-certs write
    it), with its certificate and token; a folder with too few devices is a usage error."""
    from slimsplit.apps import certs
    from slimsplit.apps.loadtest.security import credentials_dir

    certs.make_dev_pki(tmp_path, ["cam-b", "cam-a", "cam-c"], devices=tmp_path / "devices.toml")
    identities = credentials_dir(tmp_path, 2)
    assert [i.device_id for i in identities] == ["cam-a", "cam-b"]
    first = identities[0]
    assert first.tls.ca == tmp_path / "ca.crt"
    assert first.tls.cert is not None and first.tls.cert.name == "cam-a.crt"
    assert first.token_file is not None and first.token_file.name == "cam-a.token"
    with pytest.raises(ConfigError, match="has 3 devices; --clients 4 needs 4"):
        credentials_dir(tmp_path, 4)


def test_clients_with_their_own_credentials_against_an_external_tls_server(tmp_path: Path) -> None:
    """--server with --credentials: each client authenticates as its own device over mTLS + token."""
    from slimsplit.apps import certs
    from slimsplit.apps.loadtest.security import ServerCredentials
    from slimsplit.apps.loadtest.server_process import ServerProcess
    from slimsplit.bundle import default_bundle_path
    from slimsplit.edge.config import TlsSettings

    pki = certs.make_dev_pki(tmp_path, ["cam-a", "cam-b"], devices=tmp_path / "devices.toml")
    assert pki.devices_file is not None
    probe = TlsSettings(ca=pki.ca.cert, cert=pki.devices["cam-a"].cert, key=pki.devices["cam-a"].key)
    creds = ServerCredentials(pki.server.cert, pki.server.key, pki.ca.cert, pki.devices_file, probe)
    path = tmp_path / "load.json"
    with ServerProcess.start(default_bundle_path(), backend="null", credentials=creds) as server:
        code, _out, err = run_cli(
            "--server", server.address, "--credentials", str(tmp_path), "--clients", "2", "--link", "none",
            "--seconds", "0.5", "--fps", "10", "--quiet", "--json-out", str(path),
        )  # fmt: skip
    assert code == 0, err
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert [c["device_id"] for c in doc["clients"]] == ["cam-a", "cam-b"]
    assert doc["meta"]["security"] == "mtls+token"
    assert doc["overall"]["answered"] == doc["overall"]["frames"] == 2 * 5


def test_the_generator_counts_a_reply_it_cannot_trust_as_an_error_not_a_timing() -> None:
    from slimsplit.apps.loadtest.generate import _answer
    from slimsplit.v1 import slimsplit_pb2 as pb

    good = pb.Prediction(frame_id=1, timing=pb.ServerTiming(queue_ms=0.5, tail_ms=1.0, total_ms=2.0, batch_size=3))
    assert _answer(good.SerializeToString()) == ("OK", 0.5, 1.0, 2.0, 3, "")
    for bad in (float("nan"), -1.0, float("inf"), 1e30):
        reply = pb.Prediction(frame_id=1, timing=pb.ServerTiming(total_ms=bad))
        assert _answer(reply.SerializeToString())[0] == "INVALID_REPLY", bad  # the edge's status for it
    assert _answer(b"\xff\xff\xff")[0] == "INVALID_REPLY"  # not a Prediction at all


def test_link_clients_send_frames_as_planes(tmp_path: Path) -> None:
    path = tmp_path / "planes.json"
    code, _out, err = run_cli(
        *("--start-server", "--no-tls", "--clients", "2", "--link", "1mbit", "--seconds", "3", "--fps", "10"),
        *("--transmission", "planes", "--json-out", str(path)),
    )
    assert code == 0, err
    doc = json.loads(path.read_text(encoding="utf-8"))
    for c in doc["clients"]:
        assert c["error"] is None and c["summary"]["ok"] > 0
        planes = c["summary"]["planes"]  # the planes controller sends a width's 4-bit code: 1..4 planes used
        assert planes and set(planes) <= {"1", "2", "3", "4"}
        assert sum(planes.values()) == c["summary"]["ok"]
