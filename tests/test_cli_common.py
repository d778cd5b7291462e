"""The command line shared by ``slimsplit-edge``, ``slimsplit-loadtest`` and ``slimsplit-demo``
(:mod:`slimsplit.edge.cli_common`): the same link and controller flags with the same defaults and meaning in all
three, one controller check, and one mapping of failures to exit statuses."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest

from slimsplit.apps import demo, loadtest
from slimsplit.edge import cli, cli_common
from slimsplit.edge.link import DEFAULT_DELAY_MS, DEFAULT_DOWNLINK
from slimsplit.errors import ConfigError, Unavailable
from slimsplit.link.shaping import DEFAULT_QUEUE_BYTES

PARSERS = {"edge": cli.build_parser, "loadtest": loadtest.build_parser, "demo": demo.build_parser}
LINK_FLAGS = ("--link", "--downlink", "--link-delay-ms", "--link-queue-bytes", "--link-offset-s")
CONTROL_FLAGS = ("--bundle", "--controller", "--mode", "--deadline-ms", "--fps", "--max-in-flight")
OUTPUT_FLAGS = ("--json-out", "--quiet", "--every")
#: Flags whose default and meaning are the same in every CLI (their help texts must be too).
SAME_EVERYWHERE: dict[str, object] = {
    "bundle": None,
    "mode": None,
    "max_in_flight": 4,
    "downlink": DEFAULT_DOWNLINK,
    "link_delay_ms": DEFAULT_DELAY_MS,
    "link_queue_bytes": DEFAULT_QUEUE_BYTES,
    "json_out": None,
    "quiet": False,
}
#: The defaults that differ on purpose (--controller None = fixed with --mode, else mpc; --link None = the CLI's
#: own traces; --link-offset-s None = the demo's offset for its own trace).
OWN_DEFAULTS: dict[str, dict[str, object]] = {
    "edge": {"controller": "fixed", "deadline_ms": 1000.0, "fps": 0.0, "link": "none", "link_offset_s": 0.0},
    "loadtest": {"controller": None, "deadline_ms": 100.0, "fps": 10.0, "link": None, "link_offset_s": 0.0},
    "demo": {"controller": None, "deadline_ms": 100.0, "fps": 30.0, "link": None, "link_offset_s": None},
}


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_cli_has_the_shared_flags_with_the_shared_defaults(name: str) -> None:
    parser = PARSERS[name]()
    assert set(LINK_FLAGS + CONTROL_FLAGS + OUTPUT_FLAGS) <= set(options(parser))
    defaults = vars(parser.parse_args([]))
    assert {k: defaults[k] for k in SAME_EVERYWHERE} == SAME_EVERYWHERE
    assert {k: defaults[k] for k in OWN_DEFAULTS[name]} == OWN_DEFAULTS[name]


def test_the_shared_flags_read_a_command_line_the_same_way_and_say_the_same() -> None:
    argv = [
        "--controller", "mpc", "--deadline-ms", "50", "--fps", "5", "--max-in-flight", "2", "--bundle", "b",
        "--link", "2mbit", "--downlink", "none", "--link-delay-ms", "5", "--link-queue-bytes", "1000",
        "--link-offset-s", "1.5",
    ]  # fmt: skip
    parsed = {name: vars(build().parse_args(argv)) for name, build in PARSERS.items()}
    assert parsed["loadtest"]["link"] == ["2mbit"]  # the load tester takes one spec per client
    parsed["loadtest"]["link"] = "2mbit"
    keys = [flag.lstrip("-").replace("-", "_") for flag in LINK_FLAGS + CONTROL_FLAGS]
    edge = {k: parsed["edge"][k] for k in keys}
    assert edge == {
        "link": "2mbit",
        "downlink": "none",
        "link_delay_ms": 5.0,
        "link_queue_bytes": 1000,
        "link_offset_s": 1.5,
        "bundle": Path("b"),
        "controller": "mpc",
        "mode": None,
        "deadline_ms": 50.0,
        "fps": 5.0,
        "max_in_flight": 2,
    }
    for name in ("loadtest", "demo"):
        assert {k: parsed[name][k] for k in keys} == edge, name
    helps = {name: options(build()) for name, build in PARSERS.items()}
    for flag in ("--downlink", "--link-delay-ms", "--link-queue-bytes", "--bundle", "--mode", "--deadline-ms"):
        assert helps["edge"][flag].help == helps["loadtest"][flag].help == helps["demo"][flag].help, flag
    for flag in ("--source", "--connect-timeout"):  # the two CLIs that dial a server and read a source
        edge_action, load_action = helps["edge"][flag], helps["loadtest"][flag]
        assert (edge_action.default, edge_action.help) == (load_action.default, load_action.help), flag


def test_the_controller_check_resolves_the_default_and_names_the_bad_flag() -> None:
    def check(build: Any, *argv: str, extra: tuple[str, ...] = ()) -> str:
        return cli_common.check_control_args(build().parse_args(list(argv)), extra=extra)

    assert check(cli.build_parser) == "fixed"
    assert check(loadtest.build_parser) == "mpc"
    assert check(loadtest.build_parser, "--mode", "w8b4") == "fixed"
    assert check(demo.build_parser, "--controller", "sweep", extra=("sweep",)) == "sweep"
    for argv, fragment in [
        (["--controller", "sweep"], "--controller: unknown controller 'sweep'; available: fixed, ewma-greedy, mpc"),
        (["--controller", "oracle"], "slimsplit-link simulate --controller oracle"),
        (["--controller", "mpc", "--mode", "w8b4"], "--mode: fixes the mode"),
        (["--deadline-ms", "0"], "--deadline-ms: expected a number > 0, got 0.0"),
        (["--fps", "-1"], "--fps: expected a number >= 0, got -1.0"),
        (["--max-in-flight", "0"], "--max-in-flight: expected an integer >= 1, got 0"),
    ]:
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
            check(loadtest.build_parser, *argv)


def test_link_flags_become_one_emulated_link_or_none() -> None:
    parser = cli.build_parser()
    assert cli_common.link_from_args(parser.parse_args([])) is None  # --link none: dial the server directly
    args = parser.parse_args(
        ["--link", "2mbit", "--link-delay-ms", "7", "--link-queue-bytes", "5000", "--link-offset-s", "3"]
    )
    link = cli_common.link_from_args(args)
    assert link is not None and link.config.uplink is not None
    assert (link.config.delay_ms, link.config.queue_bytes, link.config.start_offset_s) == (7.0, 5000, 3.0)
    assert link.config.uplink.mean_bps == pytest.approx(2e6)
    assert cli_common.link_from_args(args, uplink="none") is None
    moved = cli_common.link_from_args(args, offset_s=9.0)
    assert moved is not None and moved.config.start_offset_s == 9.0


def _main(prepare: Any, run: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    parser = argparse.ArgumentParser(prog="slimsplit-test")
    parser.add_argument("--value", default="x")
    code = cli_common.run_main(parser, ["--value", "y"], prepare, run, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_run_main_turns_each_failure_into_one_line_and_its_exit_status(monkeypatch: pytest.MonkeyPatch) -> None:
    def prepare(args: argparse.Namespace, console: cli_common.Console) -> str:
        console.notes([f"value {args.value}"])
        return str(args.value)

    def run_ok(prepared: str, args: argparse.Namespace, console: cli_common.Console) -> int:
        console.out.write(f"ran {prepared}\n")
        return 1

    def raises(exc: BaseException) -> Any:
        def fail(*_: object) -> int:
            raise exc

        return fail

    assert _main(prepare, run_ok) == (1, "ran y\n", "slimsplit-test: note: value y\n")
    assert _main(raises(ConfigError("--value is bad")), run_ok) == (2, "", "slimsplit-test: error: --value is bad\n")
    code, _out, err = _main(prepare, raises(Unavailable("cannot reach 127.0.0.1:1")))
    assert (code, err.splitlines()[-1]) == (3, "slimsplit-test: error: cannot reach 127.0.0.1:1")
    code, _out, err = _main(prepare, raises(KeyboardInterrupt()))
    assert (code, err.splitlines()[-1]) == (130, "slimsplit-test: error: interrupted")
    silenced: list[bool] = []
    monkeypatch.setattr(cli_common, "silence_stdout", lambda: silenced.append(True))
    code, _out, err = _main(prepare, raises(BrokenPipeError()))
    assert (code, silenced, "error" in err) == (141, [True], False)
    with pytest.raises(RuntimeError):  # a bug is not a user error: it is not swallowed
        _main(prepare, raises(RuntimeError("bug")))


def test_an_unwritable_json_out_is_a_usage_error(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    console = cli_common.Console("slimsplit-test", out, err)
    written: list[Path] = []
    assert cli_common.write_json_out(console, None, written.append, 1) == 1
    assert cli_common.write_json_out(console, tmp_path / "a.json", written.append, 0) == 0
    assert written == [tmp_path / "a.json"]

    def unwritable(path: Path) -> None:
        path.write_text("{}")  # a folder: IsADirectoryError

    assert cli_common.write_json_out(console, tmp_path, unwritable, 0) == cli_common.EXIT_USAGE
    assert err.getvalue().startswith(f"slimsplit-test: error: cannot write --json-out {tmp_path}: ")
    assert err.getvalue().count("\n") == 1
