"""`vethguard completion bash|zsh`: shell completion generated from the command line's own parser,
so it never drifts from it (scripts/install.sh installs both).

The bash script holds one table: a command path ("_", "_ lab", "_ lab probe") -> the words that
may follow (subcommands and options), and an option's path ("_ get -o") -> its choices. The
completion function walks the words typed so far down that table and offers what the deepest
path allows. zsh runs the same function through bashcompinit.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from typing import Any


def table(parser: argparse.ArgumentParser, path: str = "_") -> Iterator[tuple[str, list[str]]]:
    """(path, words) for the parser and every subcommand, and (path option, choices)."""
    words: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                yield from table(sub, f"{path} {name}")
        elif action.choices and not action.option_strings:  # a positional of known values: get's kind
            words += [str(c) for c in action.choices]
        elif action.option_strings:
            words += [
                o for o in action.option_strings if o.startswith("--") or len(action.option_strings) == 1
            ]
            if action.choices:
                for option in action.option_strings:
                    yield f"{path} {option}", [str(c) for c in action.choices]
    yield path, sorted(set(words))


BASH = """# bash completion for vethguard and kubectl-vethguard (generated: vethguard completion bash)
declare -gA _vethguard_words=(
{entries}
)
_vethguard() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" path="_" w i
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="${{COMP_WORDS[i]}}"
    [[ -n "${{_vethguard_words["$path $w"]+x}}" && "$w" != -* ]] && path="$path $w"
  done
  if [[ "$prev" == -* && -n "${{_vethguard_words["$path $prev"]+x}}" ]]; then
    COMPREPLY=($(compgen -W "${{_vethguard_words["$path $prev"]}}" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "${{_vethguard_words["$path"]}}" -- "$cur"))
  fi
}}
complete -F _vethguard vethguard kubectl-vethguard
"""

ZSH_HEADER = """#compdef vethguard kubectl-vethguard
# zsh completion for vethguard (generated: vethguard completion zsh): the bash function through
# zsh's bashcompinit
autoload -U +X bashcompinit && bashcompinit
"""


def bash_script(parser: argparse.ArgumentParser) -> str:
    entries = "\n".join(
        f"  [{shlex.quote(path)}]={shlex.quote(' '.join(words))}" for path, words in table(parser)
    )
    return BASH.format(entries=entries)


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    text = bash_script(parser)
    return ZSH_HEADER + text if shell == "zsh" else text


def register(sub: Any, root: argparse.ArgumentParser) -> None:
    """`vethguard completion`, completing the whole command line `root`."""
    p = sub.add_parser(
        "completion",
        help="print the shell completion script (bash: source it or put it in "
        "/etc/bash_completion.d/vethguard; zsh: a _vethguard file on $fpath)",
    )
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell")
    p.set_defaults(func=lambda args: print(script(args.shell, root), end="") or 0)
