"""Shell completion generated from the parser: bash completes commands, subcommands, options and
their choices at any depth, and zsh gets the same function through bashcompinit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller.cli import build_parser
from controller.core.completion import script


def complete(line: str, tmp_path: Path) -> list[str]:
    """What bash offers for `line` (the last word is being completed; "" after a space)."""
    words = line.split(" ")
    probe = 'COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _vethguard; '
    probe += 'printf "%s\\n" "${COMPREPLY[@]}"'
    program = tmp_path / "complete.bash"
    program.write_text(script("bash", build_parser()) + probe + "\n")
    done = subprocess.run(
        ["bash", str(program), *words],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [w for w in done.stdout.splitlines() if w]


@pytest.mark.parametrize(
    ("line", "offered"),
    [
        ("vethguard la", ["lab"]),
        ("vethguard lab pr", ["probe"]),
        ("vethguard lab probe --pro", ["--protocol"]),
        ("vethguard lab probe --protocol ", ["TCP", "UDP", "SCTP"]),
        ("vethguard get -o ", ["wide", "json", "yaml"]),
        ("vethguard get cn", ["cnetpol", "cnetpols", "cnp", "cnps"]),
        ("vethguard explain x/a y/b --la", ["--lab"]),
        ("kubectl-vethguard do", ["doctor"]),
    ],
)
def test_bash_completes_commands_options_and_choices_at_any_depth(
    line: str, offered: list[str], tmp_path: Path
) -> None:
    assert sorted(complete(line, tmp_path)) == sorted(offered)


def test_the_zsh_script_loads_the_bash_function_through_bashcompinit() -> None:
    text = script("zsh", build_parser())
    assert text.startswith("#compdef vethguard kubectl-vethguard\n") and "bashcompinit" in text
    assert "complete -F _vethguard vethguard kubectl-vethguard" in text
