"""TLS and mTLS on loopback with certificates made by ``slimsplit-certs``: a prediction over TLS, handshake
failures that are one clear edge error (never a hang), server configuration errors naming the file, and the tool's
key permissions and refusal to overwrite."""

from __future__ import annotations

import asyncio
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from slimsplit import errors
from slimsplit.apps import certs
from slimsplit.bundle import Bundle, default_bundle_path
from slimsplit.edge.client import EdgeClient
from slimsplit.edge.config import ClientConfig, TlsSettings, load_edge_config
from slimsplit.server.app import ServerThread
from slimsplit.server.backends.null_backend import NullBackend
from slimsplit.server.config import GrpcConfig, ServerConfig, TlsConfig, load_config

#: A handshake failure must be reported well within this (the connect timeout of the tests is longer).
QUICK_S = 4.0
CONNECT_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class Pki:
    ca: certs.Issued
    server: certs.Issued
    device: certs.Issued
    other_ca: certs.Issued
    other_device: certs.Issued
    expired_server: certs.Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_dir, other_dir = root / "ca", root / "other"
    ca = certs.create_ca(ca_dir)
    other = certs.create_ca(other_dir, name="another CA")
    return Pki(
        ca=ca,
        server=certs.create_server_cert(ca_dir, root / "server", ["localhost", "127.0.0.1"]),
        device=certs.create_device_cert(ca_dir, root / "devices", "camera-01"),
        other_ca=other,
        other_device=certs.create_device_cert(other_dir, root / "other-devices", "camera-99"),
        expired_server=certs.create_server_cert(
            ca_dir, root / "expired", ["localhost", "127.0.0.1"], file_name="old", days=-2
        ),
    )


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.open(default_bundle_path())


def server(bundle: Bundle, tls: TlsConfig | None = None) -> ServerThread:
    """A server on a free loopback port (not started yet: ``with server(...) as srv`` starts it)."""
    config = ServerConfig(
        models=(bundle.root,), grpc=GrpcConfig(port=0, grace_s=0.2), log_level="warning", tls=tls or TlsConfig()
    )
    return ServerThread(config, backend=NullBackend())


@pytest.fixture(scope="module")
def mtls_server(bundle: Bundle, pki: Pki) -> Iterator[ServerThread]:
    srv = server(bundle, TlsConfig(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert)).start()
    try:
        yield srv
    finally:
        srv.stop(grace=0.2)


def infer_once(address: str, bundle: Bundle, tls: TlsSettings) -> int:
    """One unary Infer over a fresh client; the predicted class."""
    mode = bundle.manifest.modes[-1]
    f = bundle.manifest.feature

    async def go() -> int:
        import numpy as np

        from slimsplit.codec import encode_features

        config = ClientConfig(target=address, connect_timeout_s=CONNECT_TIMEOUT_S, tls=tls)
        async with EdgeClient(config) as client:
            await client.wait_ready()
            payload = encode_features(np.ones((mode.width, f.height, f.width), np.float32), mode.bits)
            msg = client.make_frame(mode=mode.name, payload=payload, model=bundle.manifest.name)
            prediction = await client.infer(msg, deadline_s=10.0)
            return int(prediction.classes[0])

    return asyncio.run(go())


def connect_error(address: str, tls: TlsSettings) -> tuple[str, float]:
    """The error of connecting to ``address`` (it must fail) and how long it took."""

    async def go() -> None:
        async with EdgeClient(ClientConfig(target=address, connect_timeout_s=CONNECT_TIMEOUT_S, tls=tls)) as client:
            await client.wait_ready()

    t0 = time.perf_counter()
    with pytest.raises(errors.Unavailable) as info:
        asyncio.run(go())
    return str(info.value), time.perf_counter() - t0


def device_tls(pki: Pki) -> TlsSettings:
    return TlsSettings(ca=pki.ca.cert, cert=pki.device.cert, key=pki.device.key, server_name="localhost")


def test_an_edge_gets_a_prediction_over_mtls(mtls_server: ServerThread, bundle: Bundle, pki: Pki) -> None:
    top = infer_once(mtls_server.address, bundle, device_tls(pki))
    assert 0 <= top < len(bundle.manifest.classes)


def test_a_tls_server_without_client_ca_serves_a_client_without_a_certificate(bundle: Bundle, pki: Pki) -> None:
    with server(bundle, TlsConfig(cert=pki.server.cert, key=pki.server.key)) as srv:
        # the certificate names 127.0.0.1 as well: no server_name override needed
        top = infer_once(srv.address, bundle, TlsSettings(ca=pki.ca.cert))
    assert 0 <= top < len(bundle.manifest.classes)


def test_a_client_certificate_from_another_ca_is_refused_naming_the_certificate(
    mtls_server: ServerThread, pki: Pki
) -> None:
    tls = TlsSettings(ca=pki.ca.cert, cert=pki.other_device.cert, key=pki.other_device.key, server_name="localhost")
    message, took = connect_error(mtls_server.address, tls)
    assert "refused this device's certificate" in message and str(pki.other_device.cert) in message
    assert took < QUICK_S


def test_mtls_without_a_client_certificate_is_refused(mtls_server: ServerThread, pki: Pki) -> None:
    message, took = connect_error(mtls_server.address, TlsSettings(ca=pki.ca.cert, server_name="localhost"))
    assert "requires a client certificate" in message and "--tls-cert" in message
    assert took < QUICK_S


def test_a_server_certificate_from_an_unknown_ca_is_refused(mtls_server: ServerThread, pki: Pki) -> None:
    tls = TlsSettings(ca=pki.other_ca.cert, cert=pki.device.cert, key=pki.device.key, server_name="localhost")
    message, took = connect_error(mtls_server.address, tls)
    assert "server's certificate is not trusted" in message and str(pki.other_ca.cert) in message
    assert took < QUICK_S


def test_an_expired_server_certificate_is_refused(bundle: Bundle, pki: Pki) -> None:
    with server(bundle, TlsConfig(cert=pki.expired_server.cert, key=pki.expired_server.key)) as srv:
        message, took = connect_error(srv.address, TlsSettings(ca=pki.ca.cert, server_name="localhost"))
    assert "not trusted" in message and "expired" in message
    assert took < QUICK_S


def test_a_plaintext_client_against_a_tls_server_is_a_clear_error(mtls_server: ServerThread) -> None:
    message, took = connect_error(mtls_server.address, TlsSettings())
    assert "uses TLS" in message and "--tls-ca" in message
    assert took < QUICK_S


def test_a_tls_client_against_a_plaintext_server_is_a_clear_error(bundle: Bundle, pki: Pki) -> None:
    with server(bundle) as srv:
        message, took = connect_error(srv.address, device_tls(pki))
    assert "does not speak TLS" in message or "plaintext server" in message
    assert took < QUICK_S


def test_the_edge_cli_exits_3_with_one_line_naming_the_certificate_problem(
    mtls_server: ServerThread, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    from slimsplit.edge.cli import main

    flags = ["--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.other_device.cert)]
    flags += ["--tls-key", str(pki.other_device.key)]
    t0 = time.perf_counter()
    status = main(["--server", f"localhost:{mtls_server.port}", *flags, "--frames", "1", "--plain", "--quiet"])
    err = capsys.readouterr().err
    assert status == 3 and time.perf_counter() - t0 < QUICK_S + 2
    assert err.count("\n") == 1 and "refused this device's certificate" in err, err


# ---------------------------------------------------------------------------------------------- configuration


def test_tls_paths_in_the_config_files_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "server.toml").write_text('[tls]\ncert = "s.crt"\nkey = "s.key"\nclient_ca = "ca.crt"\n')
    server = load_config(tmp_path / "server.toml")
    assert server.tls.cert == tmp_path / "s.crt" and server.tls.client_ca == tmp_path / "ca.crt"
    (tmp_path / "edge.toml").write_text('[tls]\nca = "ca.crt"\ncert = "d.crt"\nkey = "d.key"\n')
    edge = load_edge_config(tmp_path / "edge.toml")
    assert edge.client().tls == TlsSettings(ca=tmp_path / "ca.crt", cert=tmp_path / "d.crt", key=tmp_path / "d.key")


def test_a_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(errors.ConfigError, match=r"tls\.cert"):
        TlsConfig(cert=Path("s.crt"))
    with pytest.raises(errors.ConfigError, match="cert"):
        TlsSettings(cert=Path("d.crt"))


def test_unreadable_or_mismatched_server_files_are_config_errors_naming_the_file(
    bundle: Bundle, pki: Pki, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(errors.ConfigError, match=re.escape(f"tls.cert: cannot read {missing}")):
        server(bundle, TlsConfig(cert=missing, key=pki.server.key)).start()
    with pytest.raises(errors.ConfigError, match=r"does not match the key"):
        server(bundle, TlsConfig(cert=pki.server.cert, key=pki.device.key)).start()
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello\n")
    with pytest.raises(errors.ConfigError, match=re.escape(f"tls.client_ca: {not_pem} is not a PEM file")):
        server(bundle, TlsConfig(cert=pki.server.cert, key=pki.server.key, client_ca=not_pem)).start()


def test_the_edge_cli_refuses_a_missing_ca_file_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from slimsplit.edge.cli import main

    missing = tmp_path / "ca.crt"
    status = main(["--server", "127.0.0.1:1", "--tls-ca", str(missing), "--frames", "1", "--plain"])
    err = capsys.readouterr().err
    assert status == 2
    assert str(missing) in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- the tool


def test_keys_are_0600_and_certificates_name_the_device(pki: Pki) -> None:
    from cryptography import x509

    for issued in (pki.ca, pki.server, pki.device):
        assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pki.device.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["slimsplit://device/camera-01"]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "camera-01"


def test_the_cli_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs.main(["ca", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "ca.key").read_bytes()
    capsys.readouterr()
    assert certs.main(["ca", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and err.count("\n") == 1
    assert (tmp_path / "ca.key").read_bytes() == before
    assert certs.main(["ca", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.key").read_bytes() != before
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_the_cli_names_a_missing_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs.main(["device", "--ca", str(tmp_path / "none"), "--out", str(tmp_path), "cam"]) == 2
    err = capsys.readouterr().err
    assert "no CA at" in err and "slimsplit-certs ca" in err and err.count("\n") == 1
