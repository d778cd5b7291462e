"""slimsplit-edge's configuration: the TOML file (``--config``), flags over it, ``--print-config`` back to a file it
accepts, errors that name the key (or the flag that gave the value), and one list of controller names."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest

from slimsplit.apps import demo, link_cli, loadtest
from slimsplit.control.config import RunConfig
from slimsplit.control.controllers import MpcConfig
from slimsplit.control.registry import CONTROLLER_NAMES, CONTROLLERS
from slimsplit.edge import cli, cli_common
from slimsplit.edge.config import EdgeConfig, load_edge_config
from slimsplit.errors import ConfigError
from slimsplit.evaluation.oracle_controller import EVALUATION_CONTROLLER_NAMES
from slimsplit.settings import from_mapping, to_toml


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_the_flags_defaults_are_the_configuration_defaults() -> None:
    """Every flag maps to a key of the file, and a command line without flags is the default configuration."""
    parser = cli.build_parser()
    every = {a.dest: a.default for a in parser._actions if a.dest in cli.CONFIG_KEYS}
    assert set(every) == set(cli.CONFIG_KEYS)
    assert load_edge_config(None, cli.overrides_from_flags(every)) == EdgeConfig()
    args = parser.parse_args([])
    assert cli.config_from_args(args, cli.given_flags(parser, [])) == EdgeConfig()


def test_help_and_a_bad_flag_behave_as_ever(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    assert "--config FILE" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["--fps", "fast"])
    assert done.value.code == 2 and "invalid float value: 'fast'" in capsys.readouterr().err


def test_print_config_round_trips_through_config(tmp_path: Path) -> None:
    flags = ["--controller", "mpc", "--deadline-ms", "150", "--fps", "12.5", "--frames", "40", "--plain"]
    code, first, err = run_cli(*flags, "--link", "2mbit", "--server", "[::1]:6000", "--print-config")
    assert code == 0, err
    path = tmp_path / "edge.toml"
    path.write_text(first)
    code, again, err = run_cli("--config", str(path), "--print-config")
    assert code == 0, err
    assert again == first
    config = load_edge_config(path)
    assert config.control.run == RunConfig(deadline_ms=150.0, fps=12.5, max_in_flight=4)
    assert (config.server.address, config.frames.count, config.output.plain) == ("[::1]:6000", 40, True)
    assert from_mapping(EdgeConfig, tomllib.loads(first)) == config


def test_flags_override_the_file_and_the_file_overrides_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        '[control]\ncontroller = "mpc"\ndeadline_ms = 200\nfps = 5\n\n'
        '[control.mpc]\nmargin = 0.8\noutage_after = "none"\n\n'
        '[model]\nbundle = "bundles/mine"\n'
    )
    code, out, err = run_cli("--config", str(path), "--fps", "10", "--print-config")
    assert code == 0, err
    config = from_mapping(EdgeConfig, tomllib.loads(out))
    assert (config.control.deadline_ms, config.control.fps) == (200.0, 10.0)  # the file's, and the flag's
    assert config.control.mpc == MpcConfig(margin=0.8, outage_after=None)
    assert config.control.options() is config.control.mpc  # the chosen controller's options
    assert config.model.bundle == tmp_path / "bundles" / "mine"  # relative to the file
    assert config.server == EdgeConfig().server  # left out: defaults


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[control]\ndeadline = 100\n", "unknown configuration key 'control.deadline' (known here: controller, "),
        ("[contrl]\n", "unknown configuration key 'contrl'"),
        ("[control]\ndeadline_ms = 0\n", "control.deadline_ms: expected a number > 0, got 0.0"),
        ("[control]\nmax_in_flight = 1.5\n", "control.max_in_flight: expected an integer, got 1.5"),
        ('[control]\ncontroller = "oracle"\n', "control.controller: the oracle knows the link trace in advance"),
        ('[control]\ncontroller = "mpc"\nmode = "w8b4"\n', "control.mode: fixes the mode"),
        ("[control.mpc]\nmargin = 0\n", "control.mpc.margin: expected a number in (0, 2], got 0.0"),
        ("[control.mpc]\nalpha = 0.3\n", "unknown configuration key 'control.mpc.alpha' (known here: follower_penalty"),
        ("[control.ewma_greedy]\nalpha = 2\n", "control.ewma_greedy.alpha: expected a number in (0, 1], got 2.0"),
        ('[server]\naddress = "host:http"\n', "server.address: server address 'host:http': port 'http'"),
        ("[frames]\ncount = 0\n", "frames.count: expected an integer >= 1, got 0"),
        ("[output]\nevery = -1\n", "output.every: expected a number >= 0, got -1.0"),
        ("[link]\ndelay_ms = -1\n", "link.delay_ms: expected a number >= 0, got -1.0"),
        ('[auth]\ntoken = "sst_x"\n', "unknown configuration key 'auth.token' (known here: token_file)"),
        ("[auth]\ntoken_file = 7\n", "auth.token_file: expected a path"),
        ('[auth]\ntoken_file = "no-such.token"\n', "auth.token_file: cannot read "),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(toml)
    code, out, err = run_cli("--config", str(path))
    assert code == 2, err
    assert err.startswith(f"slimsplit-edge: error: {path}: {message}"), err
    assert err.count("\n") == 1 and "Traceback" not in out + err


def test_a_bad_flag_over_a_good_file_names_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[control]\ndeadline_ms = 100\n")
    code, _out, err = run_cli("--config", str(path), "--deadline-ms", "-5")
    assert code == 2
    assert "--deadline-ms: expected a number > 0, got -5.0" in err
    code, _out, err = run_cli("--config", str(path), "--controller", "pid")
    assert code == 2 and "--controller: unknown controller 'pid'; available: fixed, ewma-greedy, mpc" in err


def test_the_controller_names_come_from_the_registry() -> None:
    """One list: the live CLIs accept exactly the registry's names and list them; the simulator adds the oracle."""
    assert CONTROLLERS.live_names() == CONTROLLER_NAMES
    for build in (cli.build_parser, loadtest.build_parser, demo.build_parser):
        parser = build()
        for name in CONTROLLER_NAMES:
            assert cli_common.check_control_args(parser.parse_args(["--controller", name])) == name
            assert f"{name} = " in cli_common.controller_help()
        for name in ("oracle", "pid"):
            with pytest.raises(ConfigError, match=r"^--controller: "):
                cli_common.check_control_args(parser.parse_args(["--controller", name]))
        (action,) = [a for a in parser._actions if a.dest == "controller"]
        assert action.help is not None and "slimsplit-link simulate --controller oracle" in action.help
        assert "bench/" not in action.help  # bench/ is not in the wheel
    (simulate,) = [a for a in link_cli.build_parser()._subparsers._actions if a.choices]  # type: ignore[union-attr]
    sim_parser = simulate.choices["simulate"]  # type: ignore[index]
    (choice,) = [a for a in sim_parser._actions if a.dest == "controller"]
    assert tuple(choice.choices or ()) == EVALUATION_CONTROLLER_NAMES == (*CONTROLLER_NAMES, "oracle")


def test_the_edge_config_holds_one_run_configuration_for_loop_and_controller() -> None:
    config = load_edge_config(None, {"control": {"deadline_ms": 250, "fps": 8, "max_in_flight": 2}})
    client = config.client()
    assert config.control.run == RunConfig(deadline_ms=250.0, fps=8.0, max_in_flight=2)
    assert (client.deadline_ms, client.max_in_flight, client.give_up_ms) == (250.0, 2, 250.0)
    assert to_toml(config).count("deadline_ms") == 1  # one place in the file
