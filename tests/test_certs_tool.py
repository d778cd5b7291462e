"""``slimsplit-certs`` and the devices file: device certificates with tokens, rotation, revocation, the listing,
one-line errors, and :func:`certs.make_dev_pki` (certificates that pass a real mTLS handshake, a devices file the
server reads)."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from slimsplit.apps import certs
from slimsplit.errors import ConfigError
from slimsplit.server.security.devices import DeviceLimits, hash_token, load_devices


def _ca(tmp_path: Path) -> Path:
    ca = tmp_path / "ca"
    certs.create_ca(ca)
    return ca


def _token(path: Path) -> str:
    text = path.read_text(encoding="ascii")
    assert text.endswith("\n") and text.count("\n") == 1
    return text[:-1]


def _san_uris(cert_path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def test_device_with_a_devices_file_writes_a_token_and_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, out, devices = _ca(tmp_path), tmp_path / "out", tmp_path / "devices.toml"
    argv = ["device", "--ca", str(ca), "--out", str(out), "--devices", str(devices), "--models", "m1,m2"]
    argv += ["--models", "m3", "--frames-per-s", "30", "--bytes-per-s", "2e5", "--max-streams", "2", "camera-01"]
    assert certs.main(argv) == 0
    stdout = capsys.readouterr().out
    token_file = out / "camera-01.token"
    token = _token(token_file)
    assert token.startswith("sst_") and token not in stdout and str(token_file) in stdout
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(devices.stat().st_mode) == 0o600
    assert token.encode() not in devices.read_bytes()
    entry = load_devices(devices).lookup_token(token)
    assert entry is not None and entry.device_id == "camera-01"
    assert entry.models == ("m1", "m2", "m3") and not entry.revoked
    assert entry.limits == DeviceLimits(30.0, 200000.0, 2)
    assert _san_uris(out / "camera-01.crt") == ["slimsplit://device/camera-01"]
    # without --devices: the certificate only
    assert certs.main(["device", "--ca", str(ca), "--out", str(out), "cam-2"]) == 0
    assert not (out / "cam-2.token").exists() and len(load_devices(devices)) == 1


def test_device_refuses_to_replace_a_token_or_an_entry_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, out, devices = _ca(tmp_path), tmp_path / "out", tmp_path / "devices.toml"
    base = ["device", "--ca", str(ca), "--out", str(out), "--devices", str(devices)]
    assert certs.main([*base, "cam"]) == 0
    token = _token(out / "cam.token")
    capsys.readouterr()
    assert certs.main([*base, "cam"]) == 2
    err = capsys.readouterr().err
    assert "cam.token exists" in err and "--force" in err and err.count("\n") == 1
    # the device in the devices file, its token file elsewhere: still refused, and no certificate is written
    assert certs.main([*base[:4], str(tmp_path / "elsewhere"), *base[5:], "cam"]) == 2
    err = capsys.readouterr().err
    assert "already in" in err and "slimsplit-certs token" in err and err.count("\n") == 1
    assert not (tmp_path / "elsewhere").exists()
    assert load_devices(devices).lookup_token(token) is not None
    assert certs.main([*base, "--force", "cam"]) == 0
    assert load_devices(devices).lookup_token(token) is None
    assert load_devices(devices).lookup_token(_token(out / "cam.token")) is not None


def test_token_rotates_revoke_revokes_and_devices_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, devices = tmp_path / "out", tmp_path / "devices.toml"
    assert (
        certs.main(
            ["token", "--devices", str(devices), "--out", str(out), "--models", "m", "--max-streams", "1", "cam"]
        )
        == 0
    )
    assert "new device" in capsys.readouterr().out
    first = _token(out / "cam.token")
    assert certs.main(["token", "--devices", str(devices), "--out", str(out), "--frames-per-s", "5", "cam"]) == 0
    stdout = capsys.readouterr().out
    second = _token(out / "cam.token")
    assert second != first and second not in stdout and "a new token for cam" in stdout
    assert stat.S_IMODE((out / "cam.token").stat().st_mode) == 0o600
    table = load_devices(devices)
    entry = table.lookup_token(second)
    assert table.lookup_token(first) is None and entry is not None
    assert entry.models == ("m",) and entry.limits == DeviceLimits(frames_per_s=5.0, max_streams=1)
    assert certs.main(["token", "--devices", str(devices), "--out", str(out), "--all-models", "cam"]) == 0
    assert load_devices(devices).get("cam").models == ()  # type: ignore[union-attr]

    assert certs.main(["token", "--devices", str(devices), "--out", str(out), "other"]) == 0
    assert certs.main(["revoke", "--devices", str(devices), "other"]) == 0
    other = load_devices(devices).get("other")
    assert other is not None and other.revoked
    capsys.readouterr()
    assert certs.main(["devices", "--devices", str(devices)]) == 0
    listing = capsys.readouterr().out
    lines = listing.splitlines()
    assert lines[0].split() == ["DEVICE", "TOKEN", "MODELS", "STATE", "LIMITS"]
    assert lines[1].split()[:4] == ["cam", hash_token(_token(out / "cam.token"))[:8] + "...", "(all)", "active"]
    assert lines[2].split()[:4] == ["other", other.token_sha256[:8] + "...", "(all)", "revoked"]
    assert "frames_per_s=5 max_streams=1" in lines[1] and "(server defaults)" in lines[2]
    for entry in load_devices(devices):
        assert entry.token_sha256 not in listing
    assert "sst_" not in listing
    # rotation un-revokes
    assert certs.main(["token", "--devices", str(devices), "--out", str(out), "other"]) == 0
    assert not load_devices(devices).get("other").revoked  # type: ignore[union-attr]


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devices = tmp_path / "devices.toml"
    assert certs.main(["token", "--devices", str(devices), "--out", str(tmp_path), "cam"]) == 0
    capsys.readouterr()
    cases = [
        ["revoke", "--devices", str(devices), "nope"],
        ["devices", "--devices", str(tmp_path / "missing.toml")],
        ["token", "--devices", str(devices), "--out", str(tmp_path), "bad/id"],
    ]
    for argv in cases:
        assert certs.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("slimsplit-certs: error: ") and err.count("\n") == 1, err
    devices.write_text('[devices."cam"]\ntoken_sha256 = "zz"\n', encoding="utf-8")
    assert certs.main(["devices", "--devices", str(devices)]) == 2
    err = capsys.readouterr().err
    assert 'devices."cam".token_sha256' in err and err.count("\n") == 1
    before = devices.read_bytes()
    assert certs.main(["token", "--devices", str(devices), "--out", str(tmp_path), "x"]) == 2
    assert devices.read_bytes() == before and not (tmp_path / "x.token").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    for flag, value in (("--frames-per-s", "-1"), ("--max-streams", "1.5"), ("--bytes-per-s", "nan")):
        with pytest.raises(SystemExit) as info:
            certs.main(["token", "--devices", str(devices), flag, value, "cam"])
        assert info.value.code == 2
        assert flag in capsys.readouterr().err


def test_issue_token_api(tmp_path: Path) -> None:
    devices = tmp_path / "devices.toml"
    path = certs.issue_token(devices, tmp_path / "t", "cam", models=["m"], limits=DeviceLimits(bytes_per_s=1.0))
    assert path == tmp_path / "t" / "cam.token"
    entry = load_devices(devices).lookup_token(_token(path))
    assert entry is not None and entry.models == ("m",) and entry.limits.bytes_per_s == 1.0
    with pytest.raises(ConfigError, match="exists"):
        certs.issue_token(devices, tmp_path / "t", "cam")
    with pytest.raises(ConfigError, match="already in"):
        certs.issue_token(devices, tmp_path / "u", "cam")
    assert certs.issue_token(devices, tmp_path / "t", "cam", models=None, limits=None, force=True) == path
    entry = load_devices(devices).lookup_token(_token(path))
    assert entry is not None and entry.models == ("m",) and entry.limits.bytes_per_s == 1.0


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, object]:
    """An mTLS handshake over a socket pair; the client certificate the server saw."""
    a, b = socket.socketpair()
    seen: dict[str, object] = {}

    def serve() -> None:
        with server_ctx.wrap_socket(a, server_side=True) as tls:
            seen.update(tls.getpeercert() or {})
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    with client_ctx.wrap_socket(b, server_hostname="localhost") as tls:
        assert tls.recv(2) == b"ok"
    thread.join(10)
    return seen


def test_make_dev_pki_makes_certificates_for_mtls_and_a_devices_file(tmp_path: Path) -> None:
    ids = [f"dev-{i:02d}" for i in range(64)]
    start = time.perf_counter()
    pki = certs.make_dev_pki(tmp_path / "pki", ids, devices=tmp_path / "pki" / "devices.toml")
    assert time.perf_counter() - start < 10.0
    assert pki.devices_file == tmp_path / "pki" / "devices.toml" and list(pki.devices) == ids
    table = load_devices(pki.devices_file)
    assert len(table) == 64
    for device_id, creds in pki.devices.items():
        assert creds.token is not None and stat.S_IMODE(creds.token.stat().st_mode) == 0o600
        assert stat.S_IMODE(creds.key.stat().st_mode) == 0o600
        entry = table.lookup_token(_token(creds.token))
        assert entry is not None and entry.device_id == device_id and not entry.revoked
        assert _san_uris(creds.cert) == [f"slimsplit://device/{device_id}"]
    assert stat.S_IMODE(pki.devices_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.ca.key.stat().st_mode) == 0o600

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server.cert, pki.server.key)
    server_ctx.load_verify_locations(pki.ca.cert)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    creds = pki.devices["dev-07"]
    client_ctx.load_cert_chain(creds.cert, creds.key)
    seen = _handshake(server_ctx, client_ctx)
    assert ("URI", "slimsplit://device/dev-07") in seen["subjectAltName"]  # type: ignore[operator]


def test_make_dev_pki_without_a_devices_file_and_with_bad_input(tmp_path: Path) -> None:
    pki = certs.make_dev_pki(tmp_path / "a", ["cam"], server_names=["127.0.0.1", "example.test"])
    assert pki.devices_file is None and pki.devices["cam"].token is None
    assert not list((tmp_path / "a").rglob("*.token")) and not list((tmp_path / "a").rglob("*.toml"))
    cert = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.test"]
    # a second call in the same folder replaces everything (a scratch folder)
    again = certs.make_dev_pki(tmp_path / "a", ["cam"], devices=tmp_path / "a" / "d.toml")
    assert again.ca.cert.read_bytes() != b"" and len(load_devices(tmp_path / "a" / "d.toml")) == 1
    with pytest.raises(ConfigError, match="device id"):
        certs.make_dev_pki(tmp_path / "b", ["ok", "not ok"])
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        certs.make_dev_pki(tmp_path / "b", ["ok"], server_names=["bad name"])
    assert not (tmp_path / "b").exists()
