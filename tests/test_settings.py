"""slimsplit.settings: dataclasses from TOML tables, errors that name the key, and a TOML writer the reader accepts."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from slimsplit import settings
from slimsplit.errors import ConfigError
from slimsplit.settings import check


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    span: tuple[float, float] | None = (1.0, 2.0)
    label: str | None = None

    def __post_init__(self) -> None:
        check(self.rate > 0, "rate", f"expected a number > 0, got {self.rate!r}")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    count: int = 3
    on: bool = True
    paths: tuple[Path, ...] = ()
    file: Path | None = None
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, object] = field(default_factory=dict)


def test_tables_fill_nested_dataclasses_and_keys_left_out_keep_their_defaults() -> None:
    c = settings.from_mapping(Outer, {"count": 5, "inner": {"rate": 2, "span": [3, 4]}, "paths": "a"})
    assert c == Outer(count=5, inner=Inner(rate=2.0, span=(3.0, 4.0)), paths=(Path("a"),))
    assert isinstance(c.inner.rate, float)  # an integer is accepted where a number is expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"cuont": 1}, "unknown configuration key 'cuont' (known here: count, extra, file, inner, name, on, paths)"),
        ({"inner": {"rat": 1}}, "unknown configuration key 'inner.rat' (known here: label, rate, span)"),
        ({"count": "3"}, "count: expected an integer, got '3'"),
        ({"count": True}, "count: expected an integer, got True"),
        ({"on": 1}, "on: expected true or false, got 1"),
        ({"inner": 3}, "inner: expected a table, got int"),
        ({"inner": {"span": [1]}}, "inner.span: expected a list of 2 values, got [1]"),
        ({"inner": {"span": [1, "b"]}}, "inner.span[1]: expected a number, got 'b'"),
        ({"paths": [1]}, "paths[0]: expected a path string, got 1"),
        ({"inner": {"rate": 0}}, "inner.rate: expected a number > 0, got 0.0"),  # the dataclass's own check
    ],
)
def test_every_error_names_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.from_mapping(Outer, raw)
    assert str(caught.value) == message
    assert str(caught.value.context["key"]) in message


def test_to_toml_writes_a_document_from_mapping_reads_back() -> None:
    c = Outer(
        name='quote " back\\slash\nnew line \x7f',
        paths=(Path("/a b"), Path("c")),
        inner=Inner(span=None, label="é"),
        extra={"a key": 1, "k": [1, 2], "t": {"x": True}},
    )
    text = settings.to_toml(c)
    assert "# file = (unset)" in text and "[inner]" in text  # None by default: left out
    assert 'span = "none"' in text  # None, not by default: said so
    assert settings.from_mapping(Inner, {"span": "none"}).span is None
    assert settings.from_mapping(Inner, {"label": "none"}).label == "none"  # a string field keeps the string
    assert settings.from_mapping(Outer, tomllib.loads(text)) == c
    assert settings.to_toml(settings.from_mapping(Outer, tomllib.loads(text))) == text


def test_a_file_then_overrides_and_relative_paths_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "x.toml"
    path.parent.mkdir()
    path.write_text('paths = ["rel", "/abs"]\nfile = "f.txt"\ncount = 7\n[inner]\nrate = 4.0\n')
    c = settings.load(Outer, path, {"inner": {"label": "flag"}, "count": 8})
    assert c.paths == (path.parent / "rel", Path("/abs")) and c.file == path.parent / "f.txt"
    assert (c.count, c.inner.rate, c.inner.label) == (8, 4.0, "flag")  # overrides win, table by table
    assert settings.load(Outer, None, {"file": "here"}).file == Path("here")  # a flag's path is not the file's
    with pytest.raises(ConfigError, match="does not exist"):
        settings.load(Outer, tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("count = = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        settings.load(Outer, tmp_path / "bad.toml")


def test_renamed_puts_another_name_in_front() -> None:
    err = settings.field_error("deadline_ms", "expected a number > 0, got 0")
    assert str(err) == "deadline_ms: expected a number > 0, got 0"
    flag = settings.renamed(err, "--deadline-ms")
    assert str(flag) == "--deadline-ms: expected a number > 0, got 0" and flag.context["key"] == "--deadline-ms"
    plain = ConfigError("no detail")
    assert settings.renamed(plain, "x") is plain
