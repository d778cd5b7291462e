"""The devices file (``slimsplit.server.security.devices``): a round trip, a ConfigError naming the file and the key
for every problem, tokens stored only as their hash, token lookup, 0600 files, add / rotate / revoke / remove."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from slimsplit.errors import ConfigError
from slimsplit.server.security.devices import (
    DEVICE_ID_PATTERN,
    HEADER,
    TOKEN_PREFIX,
    DeviceEntry,
    DeviceLimits,
    DeviceTable,
    add_device,
    hash_token,
    load_devices,
    new_token,
    remove_device,
    revoke_device,
    save_devices,
)

HASH = "ab" * 32


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_tokens_are_prefixed_random_and_hashed_as_sha256_hex() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert re.fullmatch(r"sst_[A-Za-z0-9_-]{43}", token) and token.startswith(TOKEN_PREFIX)
    # sha256("abc")
    assert hash_token("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_table_survives_a_round_trip_through_the_file(tmp_path: Path) -> None:
    table = DeviceTable(
        {
            "camera-01": DeviceEntry(
                "camera-01",
                hash_token("t1"),
                ("fmnist-slim", 'odd "name"\\\n\t\x7f'),
                False,
                DeviceLimits(30.0, 200000.0, 2),
            ),
            "cam.b_2": DeviceEntry("cam.b_2", hash_token("t2"), (), True, DeviceLimits(frames_per_s=0.5)),
            "x": DeviceEntry("x", hash_token("t3"), limits=DeviceLimits(max_streams=0)),
        }
    )
    path = tmp_path / "sub" / "devices.toml"
    save_devices(path, table)
    text = path.read_text(encoding="utf-8")
    assert text.startswith(HEADER + "\n") and '[devices."camera-01"]' in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_devices(path)
    assert loaded == table and len(loaded) == 3
    assert [e.device_id for e in loaded] == ["camera-01", "cam.b_2", "x"]
    assert not list(path.parent.glob(".*tmp")), "no temporary file is left behind"


def test_an_empty_file_and_absent_keys_mean_no_devices_and_the_defaults(tmp_path: Path) -> None:
    assert len(load_devices(_write(tmp_path, ""))) == 0
    assert load_devices(_write(tmp_path, "[devices]\n")) == DeviceTable.empty()
    entry = load_devices(_write(tmp_path, f'[devices."cam"]\ntoken_sha256 = "{HASH.upper()}"\n')).get("cam")
    assert entry == DeviceEntry("cam", HASH)  # upper-case hex is read as lower case
    assert entry.allows_model("anything") and not entry.revoked and entry.limits == DeviceLimits()
    limited = DeviceEntry("cam", HASH, ("a", "b"))
    assert limited.allows_model("a") and not limited.allows_model("c")


@pytest.mark.parametrize(
    ("body", "key", "detail"),
    [
        ('[devices."cam"]\ntoken_sha256 = "{h}"\ncolour = "red"\n', 'devices."cam".colour', "unknown key"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\n"a b" = 1\n', 'devices."cam"."a b"', "unknown key"),
        ('[devices."cam"]\nmodels = []\n', 'devices."cam".token_sha256', "missing"),
        ('[devices."cam"]\ntoken_sha256 = "abc"\n', 'devices."cam".token_sha256', "64 hex"),
        ('[devices."cam"]\ntoken_sha256 = "{g}"\n', 'devices."cam".token_sha256', "64 hex"),
        ('[devices."cam"]\ntoken_sha256 = 5\n', 'devices."cam".token_sha256', "64 hex"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nmodels = "m"\n', 'devices."cam".models', "list"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nmodels = [1]\n', 'devices."cam".models', "list"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nmodels = [""]\n', 'devices."cam".models', "list"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nrevoked = "no"\n', 'devices."cam".revoked', "true or false"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nframes_per_s = "fast"\n', 'devices."cam".frames_per_s', "number"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nframes_per_s = true\n', 'devices."cam".frames_per_s', "number"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nframes_per_s = -1\n', 'devices."cam".frames_per_s', ">= 0"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nbytes_per_s = nan\n', 'devices."cam".bytes_per_s', ">= 0"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nbytes_per_s = inf\n', 'devices."cam".bytes_per_s', ">= 0"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nmax_streams = 1.5\n', 'devices."cam".max_streams', "integer"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nmax_streams = -2\n', 'devices."cam".max_streams', "integer"),
        ('[devices."cam"]\ntoken_sha256 = "{h}"\nmax_streams = false\n', 'devices."cam".max_streams', "integer"),
        ('[devices."-cam"]\ntoken_sha256 = "{h}"\n', 'devices."-cam"', "not a device id"),
        ('[devices."c m"]\ntoken_sha256 = "{h}"\n', 'devices."c m"', "not a device id"),
        ('[devices."{long}"]\ntoken_sha256 = "{h}"\n', 'devices."{long}"', "not a device id"),
        ("[devices]\ncam = 3\n", 'devices."cam"', "table"),
        ("devices = 3\n", "devices", "table"),
        ('[tls]\ncert = "x"\n', "tls", "unknown key"),
        (
            '[devices."a"]\ntoken_sha256 = "{h}"\n[devices."b"]\ntoken_sha256 = "{h}"\n',
            'devices."b".token_sha256',
            'the same token hash as device "a"',
        ),
    ],
)
def test_every_problem_names_the_file_and_the_key(tmp_path: Path, body: str, key: str, detail: str) -> None:
    long_id = "a" * 129
    text = body.replace("{h}", HASH).replace("{g}", "g" * 64).replace("{long}", long_id)
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_devices(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {key.replace('{long}', long_id)}: "), message
    assert detail in message and "\n" not in message
    assert info.value.context["key"] == key.replace("{long}", long_id)
    assert info.value.context["path"] == str(path)


def test_a_document_that_is_not_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, '[devices."cam"]\ntoken_sha256 = "x"\nmodels = [1,, 2]\nrevoked = false\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid TOML: .*line 3"):
        load_devices(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_devices(tmp_path / "missing.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_devices(tmp_path / "bin.toml")


def test_the_file_holds_the_hash_of_a_token_never_the_token(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    token = add_device(path, "camera-01", models=["fmnist-slim"], limits=DeviceLimits(frames_per_s=10.0))
    assert token.startswith(TOKEN_PREFIX)
    data = path.read_bytes()
    assert token.encode() not in data and token[len(TOKEN_PREFIX) :].encode() not in data
    assert hash_token(token).encode() in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = load_devices(path).get("camera-01")
    assert entry == DeviceEntry("camera-01", hash_token(token), ("fmnist-slim",), False, DeviceLimits(10.0))


def test_lookup_token_finds_the_device_of_a_token_only(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    t1 = add_device(path, "cam-1")
    t2 = add_device(path, "cam-2", models=["m"])
    table = load_devices(path)
    e1, e2 = table.lookup_token(t1), table.lookup_token(t2)
    assert e1 is not None and e1.device_id == "cam-1"
    assert e2 is not None and e2.device_id == "cam-2" and e2.models == ("m",)
    for wrong in ("", t1 + "x", t1[:-1], t1.upper(), hash_token(t1), "Bearer " + t1, new_token(), "\x00"):
        assert table.lookup_token(wrong) is None, wrong
    assert DeviceTable.empty().lookup_token(t1) is None
    assert table.get("cam-1") == e1 and table.get("cam-3") is None


def test_add_rotates_keeps_or_replaces_models_and_limits_and_unrevokes(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    first = add_device(path, "cam", models=["a"], limits=DeviceLimits(max_streams=1))
    revoke_device(path, "cam")
    table = load_devices(path)
    entry = table.lookup_token(first)
    assert entry is not None and entry.revoked  # a revoked device's entry is found: the caller checks `revoked`
    second = add_device(path, "cam", models=None, limits=None)
    table = load_devices(path)
    assert second != first and table.lookup_token(first) is None
    assert table.get("cam") == DeviceEntry("cam", hash_token(second), ("a",), False, DeviceLimits(max_streams=1))
    add_device(path, "cam", token="sst_given", models=(), limits=DeviceLimits())
    assert load_devices(path).get("cam") == DeviceEntry("cam", hash_token("sst_given"))
    assert len(load_devices(path)) == 1


def test_add_refuses_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    add_device(path, "cam", token="sst_same")
    with pytest.raises(ConfigError, match='device "cam" has the same token'):
        add_device(path, "other", token="sst_same")
    for token in ("", "has space", "two\nlines", "é", "x" * 4097):
        with pytest.raises(ConfigError, match="token"):
            add_device(path, "other", token=token)
    with pytest.raises(ConfigError, match="device id"):
        add_device(path, "../escape")
    with pytest.raises(ConfigError, match="frames_per_s"):
        add_device(path, "other", limits=DeviceLimits(frames_per_s=-1.0))
    with pytest.raises(ConfigError, match="max_streams"):
        add_device(path, "other", limits=DeviceLimits(max_streams=True))
    with pytest.raises(ConfigError, match="models"):
        add_device(path, "other", models="ab")
    assert len(load_devices(path)) == 1
    path.write_text("not toml [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        add_device(path, "other")


def test_revoke_and_remove_name_an_unknown_device(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    add_device(path, "cam")
    add_device(path, "cam2")
    with pytest.raises(ConfigError, match=r'no device "nope" \(devices: "cam", "cam2"\)'):
        revoke_device(path, "nope")
    with pytest.raises(ConfigError, match='no device "nope"'):
        remove_device(path, "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        revoke_device(tmp_path / "missing.toml", "cam")
    remove_device(path, "cam")
    assert [e.device_id for e in load_devices(path)] == ["cam2"]


def test_a_table_refuses_a_shared_token_hash_and_ids_follow_the_pattern() -> None:
    with pytest.raises(ConfigError, match="same token hash"):
        DeviceTable({"a": DeviceEntry("a", HASH), "b": DeviceEntry("b", HASH)})
    assert DEVICE_ID_PATTERN.match("camera-01") and DEVICE_ID_PATTERN.match("a" * 128)
    for bad in ("", "-a", ".a", "a/b", "a b", "a" * 129, "é"):
        assert not DEVICE_ID_PATTERN.match(bad), bad
