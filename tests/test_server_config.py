"""Server configuration: defaults, TOML, flags, precedence, and errors that name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from slimsplit.codec.header import MAX_HEADER_SIZE, MAX_PAYLOAD
from slimsplit.errors import ConfigError
from slimsplit.server.cli import build_parser, config_from_args, main
from slimsplit.server.config import (
    DEFAULT_MAX_RECEIVE_BYTES,
    BatchingConfig,
    ServerConfig,
    config_from_mapping,
    config_to_toml,
    load_config,
)


def test_defaults_are_valid_and_admit_the_largest_frame() -> None:
    c = ServerConfig()
    assert c.grpc.host == "127.0.0.1" and c.backend.name == "onnxruntime"
    assert DEFAULT_MAX_RECEIVE_BYTES > MAX_HEADER_SIZE + MAX_PAYLOAD
    assert c.model_paths()[0].name == "default_bundle"


def test_toml_file_and_relative_model_paths(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "server.toml"
    path.parent.mkdir()
    path.write_text(
        'models = ["models", "/abs/bundle"]\ndefault_top_k = 3\n[grpc]\nport = 6000\ngrace_s = 1\n'
        '[batching]\nmax_batch_size = 16\n[backend]\nname = "torch"\n[backend.options]\nplatform = "u250"\n'
        "[metrics]\nport = 9100\n"
    )
    c = load_config(path)
    assert c.models == (path.parent / "models", Path("/abs/bundle"))
    assert (c.default_top_k, c.grpc.port, c.grpc.grace_s, c.batching.max_batch_size) == (3, 6000, 1.0, 16)
    assert c.backend.name == "torch" and c.backend.options == {"platform": "u250"} and c.metrics.port == 9100


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ("colour = 1", "colour"),
        ("[grpc]\nprot = 1", "grpc.prot"),
        ("[batching]\nmax_batch = 1", "batching.max_batch"),
        ("[nope]\na = 1", "nope"),
    ],
)
def test_unknown_keys_are_named(tmp_path: Path, doc: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(doc)
    with pytest.raises(ConfigError, match=f"unknown configuration key '{key}'") as info:
        load_config(path)
    assert info.value.context["key"] == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"grpc": {"port": "50051"}}, "grpc.port"),
        ({"grpc": {"port": 70000}}, "grpc.port"),
        ({"grpc": {"reflection": 1}}, "grpc.reflection"),
        ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size"),
        ({"backend": {"device": "tpu"}}, "backend.device"),
        ({"models": 3}, "models"),
        ({"grpc": 3}, "grpc"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_bad_values_are_named(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_mapping(raw)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[grpc\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[grpc]\nport = 6000\nhost = "::1"\n[batching]\nmax_wait_us = 100\n')
    c, _ = config_from_args(["--config", str(path), "--port", "7000", "--max-batch-size", "2", "--no-reflection"])
    assert (c.grpc.port, c.grpc.host, c.grpc.reflection) == (7000, "::1", False)
    assert c.batching == BatchingConfig(max_batch_size=2, max_wait_us=100)


def test_print_config_round_trips(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--models", str(tmp_path), "--metrics-port", "9100", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert config_from_mapping(tomllib.loads(out)) == load_config(
        None, {"models": [str(tmp_path)], "metrics": {"port": 9100}}
    )
    assert config_to_toml(ServerConfig()).startswith("models = []")


def test_help_is_readable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "--models",
        "--backend",
        "model repository",
        "grpcurl",
        "SIGTERM",
        "onnxruntime",
        "--config",
    ):
        assert needle in text


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[grpc]\nprot = 1\n")
    assert main(["--config", str(path)]) == 2
    assert "grpc.prot" in capsys.readouterr().err


def test_public_serving_api() -> None:
    """The names other parts (edge client tests, benchmarks, the demo) import from ``slimsplit.server``."""
    import slimsplit.server as server

    assert set(server.__all__) == {
        "PROTOCOL_VERSION",
        "BackendConfig",
        "BatchingConfig",
        "GrpcConfig",
        "InferRequest",
        "InferResult",
        "InferenceCore",
        "MetricsConfig",
        "RunningServer",
        "ServerConfig",
        "ServerThread",
        "serve_in_thread",
        "start_server",
    }
    for name in server.__all__:
        assert getattr(server, name) is not None
    with pytest.raises(AttributeError):
        _ = server.nope
