"""The edge's bearer token: ``[auth] token_file`` / ``--token-file`` and every way a token file is refused, the
channel credentials (a token in plaintext only to loopback), the retry hint of a per-device limit, and a server
refusing the device (``UNAUTHENTICATED``/``PERMISSION_DENIED``): one clear line and exit 3, at start-up or when a
stream is ended mid-run, never a reconnection loop.

The server here is a small ``grpc.aio`` stand-in on 127.0.0.1 that records the metadata it gets and refuses as told;
the end-to-end tests against the real authenticated server are in the server's own tests."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from slimsplit import errors
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.edge import auth, cli, cli_common, status
from slimsplit.edge.channel import credentials
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import AuthSettings, ClientConfig, EdgeConfig, ReconnectPolicy, TlsSettings, load_edge_config
from slimsplit.edge.transport import Outcome
from slimsplit.protocol import AUTHORIZATION_KEY, ERROR_CLASS_KEY, RETRY_AFTER_KEY, SERVICE_NAME
from slimsplit.settings import from_mapping, to_toml
from slimsplit.v1 import slimsplit_pb2 as pb

TOKEN = "sst_" + "A" * 43


def token_file(
    folder: Path, text: str | bytes = TOKEN + "\n", name: str = "camera-01.token", mode: int = 0o600
) -> Path:
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


# ============================================================================================ the token file


def test_a_token_file_is_read_as_its_one_line(tmp_path: Path) -> None:
    assert auth.read_token(token_file(tmp_path)) == TOKEN
    assert auth.read_token(token_file(tmp_path, f"  {TOKEN}\r\n\n")) == TOKEN  # white space around it is not part


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (b"", "is empty"),
        (b" \n\n", "is empty"),
        (f"{TOKEN}\nsecond-line\n".encode(), "holds more than one line"),
        (f"{TOKEN}\r\nx".encode(), "holds more than one line"),
        ("sst_caf\u00e9".encode(), "not ASCII"),
        (b"sst_ab cd", "not printable ASCII"),
        (b"sst_ab\x07cd", "not printable ASCII"),
        (b"A" * (auth.MAX_TOKEN_BYTES + 1), f"larger than {auth.MAX_TOKEN_BYTES} bytes"),
    ],
)
def test_a_file_that_cannot_be_a_token_is_refused_naming_the_key(tmp_path: Path, contents: bytes, message: str) -> None:
    path = token_file(tmp_path, contents)
    with pytest.raises(errors.ConfigError) as info:
        auth.read_token(path)
    assert str(info.value).startswith(f"auth.token_file: {path}"), info.value
    assert message in str(info.value)
    assert info.value.context["key"] == "auth.token_file"
    assert "second-line" not in str(info.value) and "sst_ab" not in str(info.value), "never quote the contents"


def test_an_unreadable_token_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match=r"auth.token_file: cannot read .*missing.token"):
        auth.read_token(tmp_path / "missing.token")
    with pytest.raises(errors.ConfigError, match="is not a regular file"):
        auth.read_token(tmp_path)
    if os.geteuid() != 0:  # root reads a mode-0000 file anyway
        path = token_file(tmp_path, mode=0o000)
        with pytest.raises(errors.ConfigError, match=r"cannot read .*: Permission denied"):
            auth.read_token(path)


def test_a_token_file_others_may_read_is_warned_about_once(tmp_path: Path) -> None:
    path = token_file(tmp_path, name="shared.token", mode=0o644)
    seen: list[str] = []
    assert auth.read_token(path, warn=seen.append) == TOKEN
    assert auth.read_token(path, warn=seen.append) == TOKEN
    assert len(seen) == 1 and "readable by its group or by others (mode 0644)" in seen[0] and "chmod 600" in seen[0]
    assert TOKEN not in seen[0]
    quiet: list[str] = []
    auth.read_token(token_file(tmp_path, name="private.token", mode=0o600), warn=quiet.append)
    auth.read_token(token_file(tmp_path, name="group-w.token", mode=0o620), warn=quiet.append)  # writable, not readable
    assert quiet == []


def test_the_warning_goes_to_stderr_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auth.read_token(token_file(tmp_path, name="loud.token", mode=0o640))
    err = capsys.readouterr().err
    assert err.startswith("slimsplit: warning: the token file") and err.count("\n") == 1


# ============================================================================================ configuration


def test_auth_token_file_in_the_edge_toml_is_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "edge.toml"
    path.parent.mkdir()
    path.write_text('[auth]\ntoken_file = "camera-01.token"\n')
    config = load_edge_config(path)
    assert config.auth == AuthSettings(token_file=tmp_path / "conf" / "camera-01.token")
    assert config.client().auth == config.auth
    assert EdgeConfig().auth.token_file is None and not EdgeConfig().auth.enabled
    assert from_mapping(EdgeConfig, tomllib.loads(to_toml(config))) == config


def test_an_unknown_auth_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[auth]\ntoken = "sst_x"\n')
    code, _out, err = run_cli("--config", str(path))
    assert code == 2 and "unknown configuration key 'auth.token'" in err
    assert "sst_x" not in err


def test_the_token_file_flag_overrides_the_file_and_there_is_no_token_flag(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[auth]\ntoken_file = "a.token"\n')
    code, out, err = run_cli("--config", str(path), "--token-file", str(tmp_path / "b.token"), "--print-config")
    assert code == 0, err
    assert from_mapping(EdgeConfig, tomllib.loads(out)).auth.token_file == tmp_path / "b.token"
    flags = {s for a in cli.build_parser()._actions for s in a.option_strings}
    assert "--token-file" in flags and not {"--token", "--auth-token", "--bearer"} & flags


def test_the_credential_flags_are_shared(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    cli_common.add_credential_arguments(parser.add_argument_group("server"))
    args = parser.parse_args(["--tls-ca", "ca.crt", "--token-file", "t.token"])
    assert cli_common.tls_from_args(args) == TlsSettings(ca=Path("ca.crt"))
    assert cli_common.auth_from_args(args) == AuthSettings(token_file=Path("t.token"))
    with pytest.raises(errors.ConfigError, match="--tls-cert: the certificate and the key go together"):
        cli_common.tls_from_args(parser.parse_args(["--tls-cert", "d.crt"]))
    parser = argparse.ArgumentParser()
    cli_common.add_credential_arguments(parser.add_argument_group("server"), tls=False)
    assert {s for a in parser._actions for s in a.option_strings} == {"-h", "--help", "--token-file"}


@pytest.mark.parametrize(
    ("contents", "message"),
    [(b"", "is empty"), (b"a\nb\n", "more than one line"), (b"\xff\xfe", "not ASCII")],
)
def test_a_bad_token_file_is_a_usage_error_naming_the_flag(tmp_path: Path, contents: bytes, message: str) -> None:
    path = token_file(tmp_path, contents)
    code, out, err = run_cli("--token-file", str(path))
    assert code == cli_common.EXIT_USAGE, err
    assert err.startswith(f"slimsplit-edge: error: --token-file: {path}") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in out + err


def test_a_bad_token_file_in_the_config_names_the_file_and_the_key(tmp_path: Path) -> None:
    token_file(tmp_path, b"", name="empty.token")
    path = tmp_path / "edge.toml"
    path.write_text('[auth]\ntoken_file = "empty.token"\n')
    code, _out, err = run_cli("--config", str(path))
    assert code == cli_common.EXIT_USAGE
    assert err.startswith(f"slimsplit-edge: error: {path}: auth.token_file: {tmp_path / 'empty.token'} is empty"), err


def test_the_cli_notes_a_token_file_others_may_read(tmp_path: Path) -> None:
    path = token_file(tmp_path, name="world.token", mode=0o644)
    missing_ca = str(tmp_path / "none.pem")
    code, _out, err = run_cli("--server", "10.9.8.7:50051", "--tls-ca", missing_ca, "--token-file", str(path))
    assert code == cli_common.EXIT_USAGE  # the CA is missing: stop before the network
    assert "slimsplit-edge: note: the token file" in err and "chmod 600" in err


# ============================================================================================ credentials


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "[::1]", "::1", "a.localhost"])
def test_loopback_hosts(host: str) -> None:
    assert auth.is_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.2", "[2001:db8::1]", "example.org", "localhost.example.org"])
def test_hosts_that_are_not_loopback(host: str) -> None:
    assert not auth.is_loopback(host)


def test_a_token_in_plaintext_goes_only_to_loopback() -> None:
    plain = TlsSettings()
    assert credentials(plain) is None  # plaintext, no token: an insecure channel
    assert isinstance(credentials(plain, TOKEN, target="127.0.0.1:50051"), grpc.ChannelCredentials)
    assert isinstance(credentials(plain, TOKEN, target="[::1]:50051"), grpc.ChannelCredentials)
    for target, origin in [("10.1.2.3:50051", None), ("127.0.0.1:40000", "server.example.org:50051")]:
        with pytest.raises(errors.ConfigError) as info:
            credentials(plain, TOKEN, target=target, origin=origin)
        text = str(info.value)
        assert text.startswith("auth.token_file: a token over plaintext to ") and "would travel in clear" in text
        assert "use TLS" in text and TOKEN not in text


def test_a_plaintext_token_to_a_remote_server_is_a_usage_error(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    code, _out, err = run_cli("--server", "10.1.2.3:50051", "--token-file", str(path))
    assert code == cli_common.EXIT_USAGE
    assert "--token-file: a token over plaintext to 10.1.2.3:50051 would travel in clear: use TLS" in err, err


def test_a_token_over_tls_is_composed_with_the_tls_credentials(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")  # gRPC parses it at connect
    creds = credentials(TlsSettings(ca=ca), TOKEN, target="10.1.2.3:50051")  # any host: the token is encrypted
    assert isinstance(creds, grpc.ChannelCredentials)
    with pytest.raises(errors.ConfigError, match=r"tls.ca: .* is not a PEM file"):
        credentials(TlsSettings(ca=token_file(tmp_path)), TOKEN, target="10.1.2.3:50051")


# ============================================================================================ status mapping


def test_a_per_frame_refusal_with_a_retry_hint_is_rate_limited() -> None:
    error = status.error_from_frame_error(
        pb.FrameError(frame_id=7, status="RESOURCE_EXHAUSTED", message="over 30 frames/s", retry_after_ms=250),
        frame_id=7,
    )
    assert type(error) is errors.RateLimited
    assert error.context["retry_after_s"] == pytest.approx(0.25) and error.context["frame_id"] == 7
    named = status.error_from_frame_error(
        pb.FrameError(status="RESOURCE_EXHAUSTED", error_class="RateLimited", retry_after_ms=1000)
    )
    assert type(named) is errors.RateLimited and named.context["retry_after_s"] == 1.0
    plain = status.error_from_frame_error(pb.FrameError(status="RESOURCE_EXHAUSTED", message="queue full"))
    assert type(plain) is errors.Overloaded and "retry_after_s" not in plain.context


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str | bytes], ...]) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:  # pairs of str (the stubs say _Metadatum)
        return self._trailing


@pytest.mark.parametrize(
    ("trailing", "expected"),
    [
        (((RETRY_AFTER_KEY, "1500"),), 1.5),
        (((ERROR_CLASS_KEY, "RateLimited"), (RETRY_AFTER_KEY, b"20")), 0.02),
        (((RETRY_AFTER_KEY, "soon"),), None),
        (((RETRY_AFTER_KEY, "-5"),), None),
        (((RETRY_AFTER_KEY, "0"),), None),
    ],
)
def test_a_unary_refusal_reads_the_retry_hint_from_the_trailing_metadata(
    trailing: tuple[tuple[str, str | bytes], ...], expected: float | None
) -> None:
    error = status.error_from_rpc(_Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit", trailing))
    assert isinstance(error, errors.Overloaded) and error.context["status"] == "RESOURCE_EXHAUSTED"
    assert error.context.get("retry_after_s") == (pytest.approx(expected) if expected is not None else None)
    assert (type(error) is errors.RateLimited) == (expected is not None or "RateLimited" in str(trailing))


def test_refusals_are_told_apart_and_restated_once() -> None:
    unauth = status.error_from_status("UNAUTHENTICATED", "no token")
    denied = status.error_from_status("PERMISSION_DENIED", "device camera-01 is revoked")
    assert type(unauth) is errors.Unauthenticated and type(denied) is errors.PermissionDenied
    assert status.refusal(unauth) and status.refusal(denied)
    assert not status.refusal(errors.Unavailable("down")) and not status.refusal(ValueError("x"))
    line = status.refused(unauth, "gw:50051")
    assert type(line) is errors.Unauthenticated
    assert str(line).startswith(
        "the server at gw:50051 refused this device's credentials"
    ) and "UNAUTHENTICATED: no token" in str(line)
    assert "--token-file" in str(line)
    again = status.refused(line, "gw:50051")
    assert again is line
    assert "refused this device: PERMISSION_DENIED: device camera-01 is revoked" in str(status.refused(denied, "gw"))


# ============================================================================================ a stand-in server


@dataclass
class Behaviour:
    """What the stand-in server does: ``describe`` / ``stream`` = ``ok`` or a status name to end the call with."""

    describe: str = "ok"
    stream: str = "ok"
    stream_message: str = "device camera-01 was revoked"
    frame_error: str | None = None  # a status name for a per-frame error reply instead of a prediction
    retry_after_ms: int = 0
    metadata: list[dict[str, str]] = field(default_factory=list)
    streams_opened: int = 0


def _describe_response() -> pb.DescribeResponse:
    manifest = Bundle.open(default_bundle_path()).manifest
    modes = [pb.ModeInfo(name=m.name, width=m.width, bits=m.bits) for m in manifest.modes]
    model = pb.ModelInfo(name=manifest.name, version=manifest.version, modes=modes)
    return pb.DescribeResponse(protocol_version=1, models=[model])


def _handlers(b: Behaviour) -> grpc.GenericRpcHandler[Any, Any]:
    response = _describe_response()

    def record(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        b.metadata.append({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})

    async def describe(request: pb.DescribeRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.DescribeResponse:
        record(context)
        if b.describe != "ok":
            trailing = ((RETRY_AFTER_KEY, str(b.retry_after_ms)),) if b.retry_after_ms else ()
            await context.abort(getattr(grpc.StatusCode, b.describe), "refused by the stand-in", trailing)
        return response

    async def infer_stream(
        requests: AsyncIterator[pb.FeatureFrame], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamReply]:
        record(context)
        b.streams_opened += 1
        async for frame in requests:
            if b.frame_error is not None:
                error = pb.FrameError(frame_id=frame.frame_id, status=b.frame_error, message="not this model")
                yield pb.StreamReply(error=error)
                continue
            if b.stream != "ok":
                await context.abort(getattr(grpc.StatusCode, b.stream), b.stream_message)
            yield pb.StreamReply(prediction=pb.Prediction(frame_id=frame.frame_id))

    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Describe": grpc.unary_unary_rpc_method_handler(
                describe, pb.DescribeRequest.FromString, pb.DescribeResponse.SerializeToString
            ),
            "InferStream": grpc.stream_stream_rpc_method_handler(
                infer_stream, pb.FeatureFrame.FromString, pb.StreamReply.SerializeToString
            ),
        },
    )


class StandIn:
    """The stand-in server on its own event loop in a thread, on a free port of 127.0.0.1 (plaintext)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: grpc.aio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((_handlers(self.behaviour),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    def __enter__(self) -> StandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(Behaviour()) as srv:
        yield srv


def client_config(target: str, token: Path | None) -> ClientConfig:
    return ClientConfig(
        target=target,
        auth=AuthSettings(token_file=token),
        connect_timeout_s=5.0,
        reconnect=ReconnectPolicy(initial_s=0.01, max_s=0.02),
    )


def test_the_token_travels_as_a_bearer_header_over_local_credentials(standin: StandIn, tmp_path: Path) -> None:
    async def main() -> None:
        async with EdgeClient(client_config(standin.address, token_file(tmp_path))) as client:
            await client.wait_ready()
            await client.describe()
        async with EdgeClient(client_config(standin.address, None)) as client:
            await client.describe()

    asyncio.run(main())
    with_token, without = standin.behaviour.metadata
    assert with_token[AUTHORIZATION_KEY] == f"Bearer {TOKEN}"
    assert AUTHORIZATION_KEY not in without


@pytest.mark.parametrize(
    ("code", "cls", "words"),
    [
        ("UNAUTHENTICATED", errors.Unauthenticated, "refused this device's credentials"),
        ("PERMISSION_DENIED", errors.PermissionDenied, "refused this device:"),
    ],
)
def test_a_refused_describe_is_one_clear_error(
    standin: StandIn, tmp_path: Path, code: str, cls: type[errors.SlimsplitError], words: str
) -> None:
    standin.behaviour.describe = code

    async def main() -> None:
        async with EdgeClient(client_config(standin.address, token_file(tmp_path))) as client:
            await client.describe()

    with pytest.raises(cls) as info:
        asyncio.run(main())
    text = str(info.value)
    assert f"the server at {standin.address} {words}" in text and f"{code}: refused by the stand-in" in text
    assert TOKEN not in text


def test_a_rate_limited_describe_carries_the_retry_hint(standin: StandIn) -> None:
    standin.behaviour.describe, standin.behaviour.retry_after_ms = "RESOURCE_EXHAUSTED", 750

    async def main() -> None:
        async with EdgeClient(client_config(standin.address, None)) as client:
            await client.describe()

    with pytest.raises(errors.RateLimited) as info:
        asyncio.run(main())
    assert info.value.context["retry_after_s"] == pytest.approx(0.75)


def _frame(frame_id: int) -> pb.FeatureFrame:
    return pb.FeatureFrame(protocol_version=1, frame_id=frame_id, model="m", mode="w8b4", features=b"x")


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


def test_a_stream_ended_with_permission_denied_is_not_reopened(standin: StandIn, tmp_path: Path) -> None:
    standin.behaviour.stream = "PERMISSION_DENIED"
    outcomes: list[Outcome] = []

    async def main() -> None:
        async with EdgeClient(client_config(standin.address, token_file(tmp_path))) as client:
            transport = client.open_stream(seed=1)
            await transport.submit(_frame(1), 5.0, outcomes.append)
            await _until(lambda: outcomes)
            assert transport.refused is not None
            await asyncio.sleep(0.1)  # well past the reconnection backoff (10-20 ms)
            for _ in range(3):
                with pytest.raises(errors.PermissionDenied) as info:
                    await transport.submit(_frame(2), 5.0, outcomes.append)
                assert "refused this device: PERMISSION_DENIED: device camera-01 was revoked" in str(info.value)
            await transport.aclose()

    asyncio.run(main())
    assert standin.behaviour.streams_opened == 1, "a refused device's stream must not be reopened"
    (outcome,) = outcomes
    assert outcome.status == "PERMISSION_DENIED"


def test_a_stream_ended_with_unavailable_is_reopened(standin: StandIn, tmp_path: Path) -> None:
    standin.behaviour.stream = "UNAVAILABLE"
    outcomes: list[Outcome] = []

    async def main() -> None:
        async with EdgeClient(client_config(standin.address, None)) as client:
            transport = client.open_stream(seed=1)
            await transport.submit(_frame(1), 5.0, outcomes.append)
            await _until(lambda: outcomes)
            await asyncio.sleep(0.1)
            await transport.submit(_frame(2), 5.0, outcomes.append)
            await _until(lambda: len(outcomes) == 2)
            assert transport.refused is None
            await transport.aclose()

    asyncio.run(main())
    assert standin.behaviour.streams_opened == 2


def test_a_per_frame_refusal_ends_the_transport(standin: StandIn) -> None:
    standin.behaviour.frame_error = "PERMISSION_DENIED"
    outcomes: list[Outcome] = []

    async def main() -> None:
        async with EdgeClient(client_config(standin.address, None)) as client:
            transport = client.open_stream(seed=1)
            await transport.submit(_frame(1), 5.0, outcomes.append)
            await _until(lambda: outcomes)
            with pytest.raises(errors.PermissionDenied, match="refused this device"):
                await transport.submit(_frame(2), 5.0, outcomes.append)
            await transport.aclose()

    asyncio.run(main())
    assert [o.status for o in outcomes] == ["PERMISSION_DENIED"]


# ============================================================================================ the CLI's exit status


@pytest.mark.parametrize("code", ["UNAUTHENTICATED", "PERMISSION_DENIED"])
def test_a_refusal_at_start_up_is_one_line_and_exit_3(standin: StandIn, tmp_path: Path, code: str) -> None:
    standin.behaviour.describe = code
    status_, out, err = run_cli(
        "--server", standin.address, "--token-file", str(token_file(tmp_path)), "--frames", "2", "--quiet"
    )
    assert status_ == cli_common.EXIT_SERVER == 3, err
    assert err.count("\n") == 1 and "Traceback" not in out + err
    assert err.startswith(f"slimsplit-edge: error: the server at {standin.address} refused this device")
    assert f"{code}: refused by the stand-in" in err and TOKEN not in out + err


@pytest.mark.parametrize("how", ["the stream ends", "a frame is refused"])
def test_a_device_refused_mid_run_ends_the_run_with_exit_3(standin: StandIn, tmp_path: Path, how: str) -> None:
    if how == "the stream ends":  # the device was revoked: its open stream ends with PERMISSION_DENIED
        standin.behaviour.stream = "PERMISSION_DENIED"
    else:
        standin.behaviour.frame_error = "PERMISSION_DENIED"
    started = time.monotonic()
    status_, out, err = run_cli(
        "--server", standin.address, "--token-file", str(token_file(tmp_path)), "--frames", "50", "--fps", "0",
        "--max-in-flight", "1", "--rtt-pings", "0", "--plain",
    )  # fmt: skip
    assert status_ == cli_common.EXIT_SERVER, err + out[-2000:]
    assert time.monotonic() - started < 30
    assert err.strip().splitlines()[-1].startswith(f"slimsplit-edge: error: the server at {standin.address} refused")
    assert "PERMISSION_DENIED" in err and "Traceback" not in out + err
    assert standin.behaviour.streams_opened == 1


def test_the_help_names_refusal_as_exit_3() -> None:
    text = cli.build_parser().format_help()
    assert "--token-file FILE" in text
    flat = " ".join(text.split())
    assert "3 = the server cannot be reached, refused this device" in flat
