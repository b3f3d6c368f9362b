"""The external programs vethguard starts, the packages they come from, and a clear error when one
is missing.

The table is scripts/packages.tsv (shipped in the wheel as controller/_data/packages.tsv): one row
per package, the role that needs it (agent, lab, bench, test) and the programs the code starts
from it. scripts/install.sh installs from the same table, and tests/unit/test_install_programs.py
checks that every program the code, the tests and deploy/ start has a row.

`require("nft")` raises MissingProgram naming the program and the package to install, before a
wrapper such as nsenter would fail with "failed to execute nft: No such file or directory".
"""

from __future__ import annotations

import functools
import platform
import re
import shlex
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.core.errors import VethguardError

ROLES = ("agent", "lab", "bench", "test")
# In a package's name, the Debian architecture install.sh installs for (`dpkg --print-architecture`):
# Debian names the kernel-headers metapackage after it (linux-headers-amd64, linux-headers-arm64).
ARCH = "{arch}"
DEBIAN_ARCHES = ("amd64", "arm64")  # the architectures install.sh knows the headers package of
_DEBIAN_ARCH_OF_MACHINE = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# options of the wrappers below that take a value (so the value is not taken for the program)
_UNSHARE_VALUED = frozenset({"--propagation", "--setgroups", "--map-user", "--map-group", "-S", "-G"})
# shell words: builtins and keywords that end a command's scan, and those whose next word is one
_SHELL_BUILTINS = frozenset(
    {
        "[",
        "[[",
        "test",
        "echo",
        "true",
        "false",
        "set",
        "cd",
        "export",
        "exit",
        "read",
        "trap",
        "fi",
        "for",
        "done",
        "case",
        "esac",
        "{",
        "}",
        ":",
        "wait",
        "kill",
        "printf",
    }
)
_SHELL_PREFIXES = frozenset({"exec", "!", "if", "then", "else", "elif", "do", "while", "until", "time"})


@dataclass(frozen=True)
class Package:
    # "deb" (Debian, installed by scripts/install.sh), "pip" (pyproject.toml), or "machine": on
    # these machines already, not ours to install (kubectl, which Debian 12 ships only at 1.20)
    source: str
    name: str
    needed_by: str  # one of ROLES
    programs: tuple[str, ...]

    def install_hint(self) -> str:
        if self.source == "deb":
            name = self.name.replace(ARCH, "$(dpkg --print-architecture)")
            return f"the Debian package {name}: `apt-get install {name}`, or `bash scripts/install.sh`"
        if self.source == "machine":
            return f"{self.name}, which these machines provide and vethguard does not install"
        return f"the Python package {self.name}: `bash scripts/install.sh` (pip install)"


def debian_arch(machine: str | None = None) -> str:
    """The Debian architecture of a machine (`uname -m`, default this one's): amd64, arm64, or
    the machine's own name where vethguard knows no mapping."""
    machine = machine or platform.machine()
    return _DEBIAN_ARCH_OF_MACHINE.get(machine, machine)


def debian_packages(arch: str, roles: Iterable[str] = ROLES) -> list[str]:
    """The Debian packages scripts/install.sh installs on `arch` for `roles`, in table order."""
    wanted = set(roles)
    return [p.name.replace(ARCH, arch) for p in table() if p.source == "deb" and p.needed_by in wanted]


class MissingProgram(VethguardError):
    """A program vethguard starts is not installed; the message names its package."""


class PackageTableError(VethguardError):
    pass


def table_path() -> Path:
    here = Path(__file__).resolve().parent.parent  # controller/
    for candidate in (here / "_data" / "packages.tsv", here.parent / "scripts" / "packages.tsv"):
        if candidate.is_file():
            return candidate
    raise PackageTableError(
        f"the package table is missing (looked for {here / '_data' / 'packages.tsv'} and "
        f"{here.parent / 'scripts' / 'packages.tsv'}); reinstall the vethguard package"
    )


def parse_table(text: str, origin: str = "packages.tsv") -> tuple[Package, ...]:
    rows: list[Package] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 3 or ":" not in fields[0]:
            raise PackageTableError(f"{origin}:{number}: expected 'source:package needed-by programs...'")
        source, _, name = fields[0].partition(":")
        if source not in ("deb", "pip", "machine") or not name:
            raise PackageTableError(
                f"{origin}:{number}: source must be deb:, pip: or machine:, got {fields[0]!r}"
            )
        if fields[1] not in ROLES:
            raise PackageTableError(f"{origin}:{number}: needed-by must be one of {', '.join(ROLES)}")
        if set("{}") & set(name.replace(ARCH, "")):
            raise PackageTableError(f"{origin}:{number}: the only placeholder a name takes is {ARCH}")
        programs = tuple(p for p in fields[2:] if p != "-")
        rows.append(Package(source, name, fields[1], programs))
    return tuple(rows)


@functools.cache
def table() -> tuple[Package, ...]:
    path = table_path()
    return parse_table(path.read_text(), str(path))


def package_for(program: str) -> Package | None:
    name = Path(program).name
    for package in table():
        if name in package.programs:
            return package
    return None


def missing(programs: Iterable[str]) -> list[str]:
    return sorted({p for p in programs if shutil.which(p) is None})


def require(*programs: str, purpose: str = "") -> None:
    """Raise MissingProgram naming every program of `programs` not on PATH and its package."""
    absent = missing(programs)
    if not absent:
        return
    lines = []
    for program in absent:
        package = package_for(program)
        where = package.install_hint() if package else "no package vethguard knows of provides it"
        lines.append(f"{program} is not installed ({where})")
    prefix = f"{purpose}: " if purpose else ""
    raise MissingProgram(prefix + "; ".join(lines))


def require_command(argv: Sequence[str], purpose: str = "") -> None:
    """require() every program a command line starts, wrappers (nsenter, ip netns exec ...) included."""
    require(*(p for p in started_programs(argv) if p), purpose=purpose)


def role_programs(*roles: str) -> tuple[str, ...]:
    return tuple(p for package in table() if package.needed_by in roles for p in package.programs)


def started_programs(argv: Sequence[str | None]) -> list[str | None]:
    """The programs a command line starts: its first word and, through the wrappers this project
    uses (nsenter ... --, ip netns exec NS, setpriv ... --, unshare [opts], taskset [opts] CPUS,
    sh -c SCRIPT, `vethguard lab exec POD -- CMD`), the program they run. None marks a word not
    known here (a variable in a source scan); unwrapping stops at it."""
    out: list[str | None] = []
    words = list(argv)
    while words:
        program = words[0]
        out.append(Path(program).name if program else None)
        rest = words[1:]
        if _is_lab_exec(words) and "--" in rest:  # `vethguard lab exec POD -- CMD`, any interpreter
            words = rest[rest.index("--") + 1 :]
            continue
        if program is None:
            break
        name = Path(program).name
        if name in ("nsenter", "setpriv"):
            words = rest[rest.index("--") + 1 :] if "--" in rest else []
        elif name == "ip" and rest[:2] == ["netns", "exec"]:
            words = rest[3:]
        elif name == "unshare":
            words = _after_options(rest, _UNSHARE_VALUED)
        elif name == "taskset":  # taskset [-c] MASK|LIST CMD
            words = _after_options(rest, frozenset())[1:]
        elif name in ("sh", "bash") and rest[:1] == ["-c"]:
            script = rest[1] if len(rest) > 1 else None
            out.extend(script_programs(script) if script is not None else [None])
            break
        else:
            break
    return out


def _after_options(words: list[str | None], valued: frozenset[str]) -> list[str | None]:
    i = 0
    while i < len(words):
        word = words[i]
        if word is None or not word.startswith("-"):
            return words[i:]
        i += 2 if word in valued else 1
    return []


def _is_lab_exec(words: Sequence[str | None]) -> bool:
    strings = [w for w in words if w is not None]
    return any(strings[i : i + 2] == ["lab", "exec"] for i in range(len(strings)))


def script_programs(script: str) -> list[str | None]:
    """The first word of every simple command of a shell script (builtins and expansions left out)."""
    programs: list[str | None] = []
    for part in _split_commands(script):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:
            programs.append(None)
            continue
        while words and "=" in words[0] and not words[0].startswith("="):
            words = words[1:]  # VAR=value prefixes
        while words and words[0] in _SHELL_PREFIXES:
            words = words[1:]  # `exec prog`, `! prog`, `if prog`: the next word is the command
        if not words or words[0] in _SHELL_BUILTINS:
            continue
        first = words[0]
        if not first.startswith(("$", "-")):  # "$0": a program the caller chose, not this script
            programs.append(Path(first).name)
    return programs


def _split_commands(script: str) -> list[str]:
    # command substitutions `$(cmd ...)` are commands of their own
    parts = [script, *re.findall(r"\$\(([^()]*)\)", script)]
    parts[0] = re.sub(r"\$\([^()]*\)", "SUBST", parts[0])
    for sep in ("\n", ";", "&&", "||", "|"):
        parts = [piece for part in parts for piece in part.split(sep)]
    return [p.strip() for p in parts if p.strip()]
