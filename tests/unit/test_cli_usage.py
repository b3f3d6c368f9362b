"""The command line as a new user meets it: every option explains itself, `--version`, the lab
is `--lab NAME` everywhere (also `--name` in `lab`), `describe` has no output formats to offer,
and `reachability -A` is accepted by the subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib import metadata

import pytest

from controller.cli import build_parser, main


def actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action


def test_every_argument_of_every_command_has_help_text() -> None:
    silent = [
        f"{path} {'/'.join(a.option_strings) or a.dest}"
        for path, a in actions(build_parser(), "vethguard")
        if not a.help
    ]
    assert silent == []


def test_version_prints_the_installed_version_for_the_cli_and_the_kubectl_plugin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for prog in ("vethguard", "kubectl vethguard"):
        with pytest.raises(SystemExit) as done:
            main(["--version"], prog=prog)
        assert done.value.code == 0
        assert capsys.readouterr().out == f"{prog} {metadata.version('vethguard')}\n"


def test_lab_commands_take_the_lab_as_lab_like_the_debug_commands() -> None:
    parser = build_parser()
    assert parser.parse_args(["lab", "status", "--lab", "demo"]).name == "demo"
    assert parser.parse_args(["lab", "status", "--name", "demo"]).name == "demo"
    assert parser.parse_args(["explain", "x/a", "y/b", "--port", "80", "--lab", "demo"]).lab == "demo"


def test_describe_offers_no_output_format_and_says_so_in_its_own_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["describe", "netpol", "-o", "json"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: -o json" in err and "choose from )" not in err
    assert err.startswith("usage: vethguard describe ")  # the subcommand's usage, not the top one


def test_an_unknown_option_is_reported_with_the_subcommand_s_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lab", "probe", "--port", "80", "--bogus"])
    assert capsys.readouterr().err.startswith("usage: vethguard lab probe ")


def test_reachability_takes_all_namespaces() -> None:
    args = build_parser().parse_args(["reachability", "-A", "--lab", "demo"])
    assert args.all_namespaces and args.namespace is None
