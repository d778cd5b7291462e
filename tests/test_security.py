"""Device authentication, authorization, revocation and per-device limits over real mTLS on loopback, with
certificates and tokens made by ``slimsplit-certs`` and a real devices file.

The clients here are plain gRPC channels with gRPC's own credentials (ssl + access token), so each test sets exactly
the credentials it is about; the edge's own use of them is tested in ``test_edge_auth.py``.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from slimsplit.apps import certs
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.codec import encode_features
from slimsplit.errors import ConfigError
from slimsplit.protocol import PROTOCOL_VERSION, RETRY_AFTER_KEY
from slimsplit.server.app import ServerThread
from slimsplit.server.backends.null_backend import NullBackend
from slimsplit.server.config import AuthConfig, GrpcConfig, ServerConfig, TlsConfig
from slimsplit.server.security import devices
from slimsplit.server.security.devices import DeviceLimits
from slimsplit.v1 import slimsplit_pb2 as pb
from slimsplit.v1 import slimsplit_pb2_grpc as pb_grpc

#: A revoked device's stream must end within this of the devices file changing (the issue's 1 s, plus the poll).
REVOKE_S = 1.0
POLL_S = 0.1


@dataclass(frozen=True)
class Device:
    device_id: str
    cert: Path
    key: Path
    token: str


@dataclass(frozen=True)
class Pki:
    root: Path
    ca: certs.Issued
    server: certs.Issued
    other_ca: certs.Issued

    def device(self, device_id: str, devices_file: Path, **kwargs: object) -> Device:
        issued = certs.create_device_cert(self.root / "ca", self.root / "devices", device_id, force=True)
        token = devices.add_device(devices_file, device_id, **kwargs)  # type: ignore[arg-type]
        return Device(device_id, issued.cert, issued.key, token)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = certs.create_ca(root / "ca")
    return Pki(
        root=root,
        ca=ca,
        server=certs.create_server_cert(root / "ca", root / "server", ["localhost", "127.0.0.1"]),
        other_ca=certs.create_ca(root / "other", name="another CA"),
    )


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(default_bundle_path())


def server_config(bundle: Bundle, pki: Pki, devices_file: Path | None, **auth: object) -> ServerConfig:
    return ServerConfig(
        models=(bundle.root,),
        grpc=GrpcConfig(port=0, grace_s=0.2),
        log_level="warning",
        tls=TlsConfig(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert),
        auth=AuthConfig(devices_file=devices_file, reload_poll_s=POLL_S, **auth),  # type: ignore[arg-type]
    )


@pytest.fixture
def devices_file(tmp_path: Path) -> Path:
    return tmp_path / "devices.toml"


def channel(address: str, pki: Pki, device: Device | None, token: str | None = None) -> grpc.Channel:
    """A channel with ``device``'s certificate and ``token`` (default: the device's own token)."""
    cert = key = None
    if device is not None:
        cert, key = device.cert.read_bytes(), device.key.read_bytes()
        token = device.token if token is None else token
    creds = grpc.ssl_channel_credentials(pki.ca.cert.read_bytes(), key, cert)
    if token:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "localhost")])


def frame(bundle: Bundle, frame_id: int = 1, model: str | None = None) -> pb.FeatureFrame:
    mode = bundle.manifest.modes[0]
    f = bundle.manifest.feature
    payload = encode_features(np.ones((mode.width, f.height, f.width), np.float32), mode.bits)
    return pb.FeatureFrame(
        protocol_version=PROTOCOL_VERSION,
        frame_id=frame_id,
        model=bundle.manifest.name if model is None else model,
        mode=mode.name,
        features=payload,
    )


def rpc_error(fn: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=10)  # type: ignore[operator]
    return info.value


class Stream:
    """An ``InferStream`` fed from a queue in a background thread; replies collected with their arrival time."""

    def __init__(self, ch: grpc.Channel) -> None:
        self._out: queue.Queue[pb.FeatureFrame | None] = queue.Queue()
        self.replies: list[tuple[float, pb.StreamReply]] = []
        self.error: grpc.RpcError | None = None
        self.ended_at: float | None = None
        self._call = pb_grpc.SplitInferenceStub(ch).InferStream(iter(self._out.get, None))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for reply in self._call:
                self.replies.append((time.monotonic(), reply))
        except grpc.RpcError as exc:
            self.error = exc
        self.ended_at = time.monotonic()

    def send(self, f: pb.FeatureFrame) -> None:
        self._out.put(f)

    def wait_replies(self, n: int, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while len(self.replies) < n and self.ended_at is None and time.monotonic() < end:
            time.sleep(0.005)
        assert len(self.replies) >= n, (len(self.replies), self.error)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"

    def close(self) -> None:
        self._out.put(None)
        self._call.cancel()
        self._thread.join(5)


@pytest.fixture
def started(bundle: Bundle, pki: Pki, devices_file: Path) -> Iterator[tuple[ServerThread, Device, Device]]:
    """An mTLS server with a devices file of two devices (camera-01 may use every model, camera-02 too)."""
    one = pki.device("camera-01", devices_file)
    two = pki.device("camera-02", devices_file)
    with ServerThread(server_config(bundle, pki, devices_file), backend=NullBackend()) as srv:
        yield srv, one, two


# ---------------------------------------------------------------------------------------------- authentication


def test_a_device_with_its_certificate_and_token_is_served(
    started: tuple[ServerThread, Device, Device], bundle: Bundle, pki: Pki
) -> None:
    srv, one, _ = started
    with channel(srv.address, pki, one) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        assert stub.Describe(pb.DescribeRequest(), timeout=10).models
        assert stub.Infer(frame(bundle), timeout=10).frame_id == 1
        replies = list(stub.InferStream(iter([frame(bundle, 1), frame(bundle, 2)]), timeout=10))
    assert sorted(r.prediction.frame_id for r in replies) == [1, 2]


@pytest.mark.parametrize("token", ["", "sst_not-a-token", "Bearer-less"])
def test_no_or_wrong_token_is_unauthenticated_and_never_echoed(
    started: tuple[ServerThread, Device, Device], bundle: Bundle, pki: Pki, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    srv, one, _ = started
    caplog.set_level(logging.INFO)
    with channel(srv.address, pki, Device(one.device_id, one.cert, one.key, ""), token=token or None) as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        for call in (
            lambda **kw: stub.Infer(frame(bundle), **kw),
            lambda **kw: stub.Describe(pb.DescribeRequest(), **kw),
        ):
            err = rpc_error(call)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
            if token:
                assert token not in (err.details() or "")
        err = rpc_error(lambda **kw: list(stub.InferStream(iter([frame(bundle)]), **kw)))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    audit = [r.getMessage() for r in caplog.records if r.name == "slimsplit.audit"]
    assert audit and all("auth failure" in line for line in audit)
    assert ("missing_token" if not token else "bad_token") in audit[0]
    if token:
        assert all(token not in r.getMessage() for r in caplog.records)


def test_a_valid_token_with_another_devices_certificate_is_refused(
    started: tuple[ServerThread, Device, Device], bundle: Bundle, pki: Pki
) -> None:
    srv, one, two = started
    with channel(srv.address, pki, one, token=two.token) as ch:
        err = rpc_error(pb_grpc.SplitInferenceStub(ch).Infer, frame(bundle))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "does not belong to the device of the client certificate ('camera-01')" in (err.details() or "")
    assert two.token not in (err.details() or "")


def test_the_health_service_needs_no_token(started: tuple[ServerThread, Device, Device], pki: Pki) -> None:
    srv, one, _ = started
    with channel(srv.address, pki, Device(one.device_id, one.cert, one.key, ""), token=None) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tokens_are_stored_hashed_and_not_logged(
    bundle: Bundle, pki: Pki, devices_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = pki.device("camera-01", devices_file)
    text = devices_file.read_text()
    assert one.token not in text and devices.hash_token(one.token) in text
    assert devices_file.stat().st_mode & 0o077 == 0
    caplog.set_level(logging.DEBUG)
    with ServerThread(server_config(bundle, pki, devices_file), backend=NullBackend()) as srv:
        with channel(srv.address, pki, one) as ch:
            pb_grpc.SplitInferenceStub(ch).Infer(frame(bundle), timeout=10)
        with channel(srv.address, pki, one, token=one.token[:-2] + "xx") as ch:
            rpc_error(pb_grpc.SplitInferenceStub(ch).Infer, frame(bundle))
        metrics = generate_latest(srv.running.metrics.registry).decode()
    assert all(one.token[4:20] not in r.getMessage() for r in caplog.records)
    assert one.token[4:20] not in metrics
    assert 'slimsplit_device_frames_total{device="camera-01",status="OK"} 1.0' in metrics
    assert 'slimsplit_auth_failures_total{reason="bad_token"} 1.0' in metrics


def test_the_audit_log_is_rate_limited(
    bundle: Bundle, pki: Pki, devices_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one = pki.device("camera-01", devices_file)
    caplog.set_level(logging.WARNING, logger="slimsplit.audit")
    config = server_config(bundle, pki, devices_file, audit_lines_per_s=0.5, audit_burst=3)
    with ServerThread(config, backend=NullBackend()) as srv, channel(srv.address, pki, one, token="sst_wrong") as ch:
        stub = pb_grpc.SplitInferenceStub(ch)
        for _ in range(30):
            rpc_error(stub.Describe, pb.DescribeRequest())
        guard = srv.running.guard
        assert guard is not None
        written, dropped = guard.audit.written, guard.audit.dropped
    lines = [r for r in caplog.records if r.name == "slimsplit.audit"]
    assert len(lines) == written <= 4
    assert written + dropped == 30


# ---------------------------------------------------------------------------------------------- authorization


def test_a_model_the_device_may_not_use_is_permission_denied(bundle: Bundle, pki: Pki, devices_file: Path) -> None:
    one = pki.device("camera-01", devices_file, models=("another-model",))
    with (
        ServerThread(server_config(bundle, pki, devices_file), backend=NullBackend()) as srv,
        channel(srv.address, pki, one) as ch,
    ):
        stub = pb_grpc.SplitInferenceStub(ch)
        err = rpc_error(stub.Infer, frame(bundle))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not use model" in (err.details() or "")
        (reply,) = list(stub.InferStream(iter([frame(bundle, 7)]), timeout=10))
    assert reply.error.frame_id == 7 and reply.error.status == "PERMISSION_DENIED"
    assert reply.error.error_class == "PermissionDenied"


def test_a_revoked_device_is_refused_and_its_open_stream_ends_while_others_go_on(
    started: tuple[ServerThread, Device, Device], bundle: Bundle, pki: Pki, devices_file: Path
) -> None:
    srv, one, two = started
    with channel(srv.address, pki, one) as ch1, channel(srv.address, pki, two) as ch2:
        s1, s2 = Stream(ch1), Stream(ch2)
        try:
            s1.send(frame(bundle, 1))
            s2.send(frame(bundle, 1))
            s1.wait_replies(1)
            s2.wait_replies(1)
            devices.revoke_device(devices_file, "camera-01")
            revoked_at = time.monotonic()
            s1.join(timeout=5)
            assert s1.error is not None and s1.error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "revoked" in (s1.error.details() or "")
            assert s1.ended_at is not None and s1.ended_at - revoked_at < REVOKE_S + POLL_S
            for i in range(2, 6):  # the other device's stream was not dropped
                s2.send(frame(bundle, i))
            s2.wait_replies(5)
            assert s2.error is None and all(r.HasField("prediction") for _, r in s2.replies)
            err = rpc_error(pb_grpc.SplitInferenceStub(ch1).Infer, frame(bundle))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            s1.close()
            s2.close()
    assert srv.running.service.active_streams == 0 or _eventually(lambda: srv.running.service.active_streams == 0)


def _eventually(cond: object, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_bad_devices_file_on_reload_keeps_the_devices_in_force(
    started: tuple[ServerThread, Device, Device], bundle: Bundle, pki: Pki, devices_file: Path
) -> None:
    srv, one, _ = started
    devices_file.write_text("[devices.x\n")
    assert srv.reload_devices() is False
    with channel(srv.address, pki, one) as ch:
        assert pb_grpc.SplitInferenceStub(ch).Infer(frame(bundle), timeout=10).frame_id == 1


def test_a_new_token_takes_effect_on_reload(
    started: tuple[ServerThread, Device, Device], bundle: Bundle, pki: Pki, devices_file: Path
) -> None:
    srv, one, _ = started
    new = devices.add_device(devices_file, "camera-01")
    assert srv.reload_devices() is True
    with channel(srv.address, pki, one) as ch:
        assert rpc_error(pb_grpc.SplitInferenceStub(ch).Infer, frame(bundle)).code() == grpc.StatusCode.UNAUTHENTICATED
    with channel(srv.address, pki, one, token=new) as ch:
        assert pb_grpc.SplitInferenceStub(ch).Infer(frame(bundle), timeout=10).frame_id == 1


# ---------------------------------------------------------------------------------------------- limits


def test_an_over_limit_device_gets_resource_exhausted_with_a_hint_and_another_keeps_its_rate(
    bundle: Bundle, pki: Pki, devices_file: Path
) -> None:
    slow = pki.device("camera-01", devices_file, limits=DeviceLimits(frames_per_s=5.0))
    fast = pki.device("camera-02", devices_file)
    config = server_config(bundle, pki, devices_file, burst_s=1.0)
    with (
        ServerThread(config, backend=NullBackend()) as srv,
        channel(srv.address, pki, slow) as ch1,
        channel(srv.address, pki, fast) as ch2,
    ):
        frames = [frame(bundle, i) for i in range(40)]
        slow_replies = list(pb_grpc.SplitInferenceStub(ch1).InferStream(iter(frames), timeout=20))
        fast_replies = list(pb_grpc.SplitInferenceStub(ch2).InferStream(iter(frames), timeout=20))
        err = rpc_error(pb_grpc.SplitInferenceStub(ch1).Infer, frame(bundle))
    refused = [r.error for r in slow_replies if r.HasField("error")]
    assert len(slow_replies) == 40 and 30 <= len(refused) <= 36  # a burst of 5 (and what refilled), the rest refused
    assert all(e.status == "RESOURCE_EXHAUSTED" and e.error_class == "RateLimited" for e in refused)
    assert all(0 < e.retry_after_ms <= 200 for e in refused)
    assert "5 frames/s" in refused[0].message
    assert all(r.HasField("prediction") for r in fast_replies) and len(fast_replies) == 40
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    metadata: tuple[tuple[str, str], ...] = err.trailing_metadata() or ()  # type: ignore[assignment]
    trailing = dict(metadata)
    assert int(trailing[RETRY_AFTER_KEY]) > 0


def test_a_bytes_limit_refuses_frames_beyond_it(bundle: Bundle, pki: Pki, devices_file: Path) -> None:
    size = len(frame(bundle).features)
    dev = pki.device("camera-01", devices_file, limits=DeviceLimits(bytes_per_s=size * 3.0))
    with (
        ServerThread(server_config(bundle, pki, devices_file), backend=NullBackend()) as srv,
        channel(srv.address, pki, dev) as ch,
    ):
        replies = list(
            pb_grpc.SplitInferenceStub(ch).InferStream(iter([frame(bundle, i) for i in range(10)]), timeout=20)
        )
    refused = [r.error for r in replies if r.HasField("error")]
    assert 5 <= len(refused) <= 7 and "bytes/s" in refused[0].message


def test_the_concurrent_stream_limit(bundle: Bundle, pki: Pki, devices_file: Path) -> None:
    dev = pki.device("camera-01", devices_file, limits=DeviceLimits(max_streams=1))
    with (
        ServerThread(server_config(bundle, pki, devices_file), backend=NullBackend()) as srv,
        channel(srv.address, pki, dev) as ch,
    ):
        first = Stream(ch)
        try:
            first.send(frame(bundle, 1))
            first.wait_replies(1)
            err = rpc_error(lambda **kw: list(pb_grpc.SplitInferenceStub(ch).InferStream(iter([frame(bundle)]), **kw)))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "stream(s) open" in (err.details() or "")
        finally:
            first.close()
        assert _eventually(lambda: not srv.running.guard.device("camera-01").streams)  # type: ignore[union-attr]
        assert list(pb_grpc.SplitInferenceStub(ch).InferStream(iter([frame(bundle)]), timeout=10))


# ---------------------------------------------------------------------------------------------- transport policy


def test_plaintext_beyond_loopback_needs_insecure(bundle: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    config = ServerConfig(
        models=(bundle.root,), grpc=GrpcConfig(host="0.0.0.0", port=0, grace_s=0.1), log_level="warning"
    )
    with pytest.raises(ConfigError, match=r"refusing to serve plaintext on 0\.0\.0\.0.*--insecure"):
        ServerThread(config, backend=NullBackend()).start()
    caplog.set_level(logging.WARNING, logger="slimsplit.server")
    insecure = replace(config, grpc=replace(config.grpc, insecure=True))
    with ServerThread(insecure, backend=NullBackend()):
        pass
    assert any("PLAINTEXT" in r.getMessage() and "--insecure" in r.getMessage() for r in caplog.records)


def test_the_health_only_port_is_plaintext_and_serves_nothing_else(
    started: tuple[ServerThread, Device, Device], bundle: Bundle, pki: Pki, devices_file: Path
) -> None:
    config = server_config(bundle, pki, devices_file)
    config = replace(config, grpc=replace(config.grpc, health_port=0))
    with ServerThread(config, backend=NullBackend()) as srv:
        port = srv.running.health_port
        assert port is not None
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            err = rpc_error(pb_grpc.SplitInferenceStub(ch).Describe, pb.DescribeRequest())
            assert err.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_bad_devices_file_at_start_names_the_key(bundle: Bundle, pki: Pki, devices_file: Path) -> None:
    devices_file.write_text('[devices."camera-01"]\ntoken_sha256 = "abc"\n')
    with pytest.raises(ConfigError, match="token_sha256"):
        ServerThread(server_config(bundle, pki, devices_file), backend=NullBackend()).start()


def test_mtls_without_a_devices_file_identifies_devices_by_certificate(
    bundle: Bundle, pki: Pki, tmp_path: Path
) -> None:
    dev = pki.device("camera-07", tmp_path / "unused.toml")
    with ServerThread(server_config(bundle, pki, None), backend=NullBackend()) as srv:
        with channel(srv.address, pki, Device(dev.device_id, dev.cert, dev.key, ""), token=None) as ch:
            assert pb_grpc.SplitInferenceStub(ch).Infer(frame(bundle), timeout=10).frame_id == 1
        metrics = generate_latest(srv.running.metrics.registry).decode()
    assert 'slimsplit_device_frames_total{device="camera-07",status="OK"} 1.0' in metrics


def test_an_expired_device_certificate_is_refused(bundle: Bundle, pki: Pki, devices_file: Path) -> None:
    dev = pki.device("camera-01", devices_file)
    old = certs.create_device_cert(pki.root / "ca", pki.root / "expired", "camera-01", days=-2)
    with (
        ServerThread(server_config(bundle, pki, devices_file), backend=NullBackend()) as srv,
        channel(srv.address, pki, Device("camera-01", old.cert, old.key, dev.token)) as ch,
    ):
        err = rpc_error(pb_grpc.SplitInferenceStub(ch).Describe, pb.DescribeRequest())
    assert err.code() == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------------------------------- SIGHUP


def test_sighup_reloads_without_dropping_the_streams_of_devices_that_stay(
    bundle: Bundle, pki: Pki, devices_file: Path, tmp_path: Path
) -> None:
    """A real ``slimsplit-server`` process: SIGHUP applies a revocation at once (the poll is set to an hour)."""
    one = pki.device("camera-01", devices_file)
    two = pki.device("camera-02", devices_file)
    toml = tmp_path / "server.toml"
    toml.write_text(
        f'models = ["{bundle.root}"]\nlog_level = "info"\n[grpc]\nport = 0\n[backend]\nname = "null"\n'
        f'[tls]\ncert = "{pki.server.cert}"\nkey = "{pki.server.key}"\nclient_ca = "{pki.ca.cert}"\n'
        f'[auth]\ndevices_file = "{devices_file}"\nreload_poll_s = 3600\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimsplit.server.cli", "--config", str(toml)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = _serving_address(proc)
        with channel(address, pki, one) as ch1, channel(address, pki, two) as ch2:
            s1, s2 = Stream(ch1), Stream(ch2)
            try:
                s1.send(frame(bundle, 1))
                s2.send(frame(bundle, 1))
                s1.wait_replies(1)
                s2.wait_replies(1)
                devices.revoke_device(devices_file, "camera-01")
                os.kill(proc.pid, signal.SIGHUP)
                s1.join(timeout=5)
                assert s1.error is not None and s1.error.code() == grpc.StatusCode.PERMISSION_DENIED
                s2.send(frame(bundle, 2))
                s2.wait_replies(2)
                assert s2.error is None
            finally:
                s1.close()
                s2.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "SIGHUP: reloading the devices file" in err and "1 stream(s) ended" in err
    assert one.token not in err and two.token not in err


def _serving_address(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    end = time.monotonic() + 60
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        if " on 127.0.0.1:" in line and "serving" in line:
            return line.split(" on ", 1)[1].split(" ", 1)[0]
    raise AssertionError("the server did not start")
