"""Every external program the code, the tests and deploy/ start comes from a package that
scripts/install.sh installs (scripts/packages.tsv), and the DaemonSet image gets the agent's
packages and no more.

The scan reads the source, not a list kept by hand: every call of subprocess.run/Popen/
check_output/check_call/call, os.execv*, asyncio.create_subprocess_exec and shutil.which, followed
through the project's own wrappers (a function that hands its parameter to one of those is a
wrapper too, to a fixed point), with the argv resolved from literals, local and module names,
`+` and `*` splices, and functions that return a command line. Wrappers of wrappers are unwrapped
by controller.core.programs.started_programs (nsenter ... --, ip netns exec NS, setpriv, unshare,
taskset, sh -c SCRIPT, `lab exec POD -- CMD`). A call whose program the scan cannot name must be listed in
DYNAMIC with the reason, so a new one fails until someone looks at it."""

from __future__ import annotations

import ast
import itertools
import platform
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from controller.core import programs

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("controller", "tests")
INSTALL = REPO / "scripts" / "install.sh"

# call sites whose program is chosen at run time: (file, enclosing function) -> why that is fine
DYNAMIC = {
    (
        "controller/lab/cli.py",
        "cmd_exec",
    ): "`vethguard lab exec POD -- CMD` runs the user's CMD; programs.require names its package first",
    ("controller/core/programs.py", "missing"): "looks up the programs its callers name",
    (
        "controller/lab/agent_pods.py",
        "start",
    ): "pods/exec in a lab agent pod runs the command the exec request names (nsenter into the node)",
    (
        "tests/conformance/runner.py",
        "run",
    ): "the vethguard console script, or this interpreter with -m controller.cli",
    (
        "tests/conformance/runner.py",
        "down",
    ): "the vethguard console script, or this interpreter with -m controller.cli",
    (
        "tests/unit/test_dockerfile.py",
        "lint",
    ): "hadolint, found by hadolint() with shutil.which (scanned as such)",
    ("tests/unit/test_map_layout.py", "c_layout"): "runs the layout program gcc just built",
    (
        "tests/lab/test_uninstall_lab.py",
        "agent",
    ): "AgentSupervisor.command(node): the lab agent's command line (nsenter, this interpreter), "
    "scanned where controller/lab/agents.py starts it",
}

# Builtin sinks: dotted callee -> (parameter names, the argv template over them)
_ARGV = ("argv",)


@dataclass(frozen=True)
class Param:
    """A parameter of the function being summarised; splice: it stands for several words."""

    name: str
    splice: bool


Word = str | None | Param
Template = tuple[Word, ...]


@dataclass
class Sink:
    params: tuple[str, ...]
    vararg: str | None
    template: Template


BUILTIN_SINKS = {
    **{
        f"subprocess.{f}": Sink(_ARGV, None, (Param("argv", True),))
        for f in ("run", "Popen", "check_output", "check_call", "call")
    },
    **{
        f"os.{f}": Sink(("file", "argv"), None, (Param("argv", True),))
        for f in ("execv", "execvp", "execvpe")
    },
    "asyncio.create_subprocess_exec": Sink(
        ("program",), "args", (Param("program", False), Param("args", True))
    ),
    "shutil.which": Sink(("cmd",), None, (Param("cmd", False),)),
}


@dataclass
class Site:
    file: str
    function: str
    line: int
    programs: list[str | None]


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return ""


def module_file(module: str) -> str | None:
    path = REPO / (module.replace(".", "/") + ".py")
    return str(path.relative_to(REPO)) if path.is_file() else None


def imports(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Local name -> (file of the module, function name or None for the module itself)."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (f := module_file(alias.name)) and alias.asname:
                    out[alias.asname] = (f, None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                local = alias.asname or alias.name
                if f := module_file(f"{node.module}.{alias.name}"):
                    out[local] = (f, None)
                elif f := module_file(node.module):
                    out[local] = (f, alias.name)
    return out


@dataclass
class Function:
    file: str
    name: str
    node: ast.AST
    params: tuple[str, ...]
    vararg: str | None
    module_names: dict[str, ast.expr]
    imported: dict[str, tuple[str, str | None]]
    local_names: dict[str, ast.expr] = field(default_factory=dict)

    def resolve(self, func: ast.expr) -> tuple[str, str] | None:
        """The project function a call names: (file, name), or None when it is not one we can tell."""
        if isinstance(func, ast.Name):
            file, name = self.imported.get(func.id, (self.file, func.id))
            return (file, name) if name else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            base = func.value.id
            if base in ("self", "cls"):
                return (self.file, func.attr)
            file, name = self.imported.get(base, ("", ""))
            if file and name is None:
                return (file, func.attr)
        return None

    def __post_init__(self) -> None:
        body = self.node.body if isinstance(self.node, ast.Module) else [self.node]
        for stmt in body:
            for sub in ast.walk(stmt):
                if (
                    isinstance(sub, ast.Assign)
                    and len(sub.targets) == 1
                    and isinstance(sub.targets[0], ast.Name)
                ):
                    self.local_names.setdefault(sub.targets[0].id, sub.value)
                elif isinstance(sub, ast.AnnAssign) and isinstance(sub.target, ast.Name) and sub.value:
                    self.local_names.setdefault(sub.target.id, sub.value)

    def calls(self) -> Iterator[ast.Call]:
        if isinstance(self.node, ast.Module):  # module level: not inside any def
            stack: list[ast.AST] = list(self.node.body)
            while stack:
                item = stack.pop()
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    if isinstance(item, ast.ClassDef):
                        stack.extend(s for s in item.body if not isinstance(s, ast.FunctionDef))
                    continue
                if isinstance(item, ast.Call):
                    yield item
                stack.extend(ast.iter_child_nodes(item))
        else:
            for sub in ast.walk(self.node):
                if isinstance(sub, ast.Call):
                    yield sub


class Scanner:
    def __init__(self) -> None:
        self.functions: list[Function] = []
        self.returns: dict[tuple[str, str], Template] = {}  # functions that return a command line
        for path in sorted(itertools.chain.from_iterable((REPO / d).rglob("*.py") for d in SCANNED)):
            rel = str(path.relative_to(REPO))
            tree = ast.parse(path.read_text(), rel)
            module_names = {
                s.targets[0].id: s.value
                for s in tree.body
                if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
            }
            imported = imports(tree)
            self.functions.append(Function(rel, "<module>", tree, (), None, module_names, imported))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    args = node.args
                    params = tuple(a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs])
                    vararg = args.vararg.arg if args.vararg else None
                    self.functions.append(
                        Function(rel, node.name, node, params, vararg, module_names, imported)
                    )
        for fn in self.functions:
            if isinstance(fn.node, ast.FunctionDef):
                rets = [s.value for s in ast.walk(fn.node) if isinstance(s, ast.Return) and s.value]
                if len(rets) == 1 and isinstance(rets[0], ast.List | ast.Tuple):
                    self.returns[(fn.file, fn.name)] = self.template(
                        fn, rets[0], set(), substitute_params=False
                    )

    # ---------------------------------------------------------------- argv templates
    def word(self, fn: Function, node: ast.expr, seen: set[str], substitute_params: bool = True) -> Word:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if dotted(node) == "sys.executable":
            return "python3"
        if isinstance(node, ast.JoinedStr):  # f"--net={path}": the literal parts matter, not the values
            return "".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values)
        if isinstance(node, ast.Name):
            if node.id in fn.params or node.id == fn.vararg:
                return Param(node.id, False) if substitute_params else None
            value = fn.local_names.get(node.id) or fn.module_names.get(node.id)
            if value is not None and node.id not in seen and not isinstance(value, ast.List | ast.Tuple):
                return self.word(fn, value, seen | {node.id}, substitute_params)
        return None

    def template(
        self, fn: Function, node: ast.expr, seen: set[str], substitute_params: bool = True
    ) -> Template:
        if isinstance(node, ast.List | ast.Tuple):
            out: list[Word] = []
            for elt in node.elts:
                if isinstance(elt, ast.Starred):
                    out.extend(self.template(fn, elt.value, seen, substitute_params))
                else:
                    out.append(self.word(fn, elt, seen, substitute_params))
            return tuple(out)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.template(fn, node.left, seen, substitute_params) + self.template(
                fn, node.right, seen, substitute_params
            )
        if isinstance(node, ast.Call) and dotted(node.func) in ("list", "tuple") and len(node.args) == 1:
            return self.template(fn, node.args[0], seen, substitute_params)
        if isinstance(node, ast.Call):
            target = fn.resolve(node.func)
            if target in self.returns:
                return self.returns[target]
        if isinstance(node, ast.Name):
            if node.id in fn.params or node.id == fn.vararg:
                return (Param(node.id, True),) if substitute_params else (None,)
            value = fn.local_names.get(node.id) or fn.module_names.get(node.id)
            if value is not None and node.id not in seen:
                return self.template(fn, value, seen | {node.id}, substitute_params)
        return (None,)

    def call_template(self, fn: Function, call: ast.Call, sink: Sink) -> Template:
        """The sink's template with its parameters replaced by this call's arguments."""
        bound: dict[str, Template] = {}
        positional = list(call.args)
        for name in sink.params:
            if not positional or isinstance(positional[0], ast.Starred):
                break
            bound[name] = self.arg(fn, positional.pop(0), sink, name)
        if sink.vararg is not None:
            words: list[Word] = []
            for arg in positional:
                if isinstance(arg, ast.Starred):
                    words.extend(self.template(fn, arg.value, set()))
                else:
                    words.append(self.word(fn, arg, set()))
            bound[sink.vararg] = tuple(words)
        for kw in call.keywords:
            if kw.arg in sink.params:
                bound[kw.arg] = self.arg(fn, kw.value, sink, kw.arg)
        out: list[Word] = []
        for w in sink.template:
            if isinstance(w, Param):
                out.extend(bound.get(w.name, (None,)))
            else:
                out.append(w)
        return tuple(out)

    def arg(self, fn: Function, node: ast.expr, sink: Sink, name: str) -> Template:
        single = any(isinstance(w, Param) and w.name == name and not w.splice for w in sink.template)
        return (self.word(fn, node, set()),) if single else self.template(fn, node, set())

    # ---------------------------------------------------------------- fixed point
    def scan(self) -> list[Site]:
        derived: dict[tuple[str, str], Sink] = {}
        while True:
            sites: list[Site] = []
            new: dict[tuple[str, str], Sink] = {}
            for fn in self.functions:
                for call in fn.calls():
                    sink = BUILTIN_SINKS.get(dotted(call.func))
                    if sink is None:
                        target = fn.resolve(call.func)
                        if target is None or target == (fn.file, fn.name):
                            continue
                        sink = derived.get(target)
                    if sink is None:
                        continue
                    tpl = self.call_template(fn, call, sink)
                    words = [w if not isinstance(w, Param) else f"\0{w.name}" for w in tpl]
                    started = programs.started_programs(words)
                    if (
                        fn.name != "<module>"
                        and any(isinstance(w, Param) for w in tpl)
                        and (any(p and p.startswith("\0") for p in started) or _runs_the_cli(words))
                    ):
                        # a wrapper: its caller's arguments name the program
                        new.setdefault((fn.file, fn.name), Sink(fn.params, fn.vararg, tpl))
                        continue
                    sites.append(
                        Site(
                            fn.file,
                            fn.name,
                            call.lineno,
                            [None if p and p.startswith("\0") else p for p in started],
                        )
                    )
            if new.keys() <= derived.keys():
                return sites
            derived.update(new)


def _runs_the_cli(words: list[str | None]) -> bool:
    """`python3 -m controller.cli ...` or `vethguard ...`: its `lab exec POD -- CMD` starts CMD."""
    return words[:3] == ["python3", "-m", "controller.cli"] or words[:1] == ["vethguard"]


def deploy_programs() -> list[tuple[str, list[str | None]]]:
    """Programs the DaemonSet's containers run (command + args), which the image must hold."""
    out = []
    for path in sorted((REPO / "deploy").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                argv = [*container.get("command", []), *container.get("args", [])]
                if container.get("command"):
                    out.append((f"{path.name}:{container['name']}", programs.started_programs(argv)))
    return out


def install_packages(*flags: str) -> list[str]:
    out = subprocess.run(
        ["bash", str(INSTALL), "--list-packages", *flags],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.split()


@pytest.fixture(scope="module")
def sites() -> list[Site]:
    return Scanner().scan()


def test_the_scan_finds_the_programs_the_lab_is_known_to_start(sites: list[Site]) -> None:
    found = {p for s in sites for p in s.programs if p}
    # spot checks that the scanner follows wrappers: nft and dnsmasq run through nsenter,
    # iptables through `ip netns exec`, curl through `lab exec -- curl`, tc through a test helper
    assert {
        "nft",
        "dnsmasq",
        "nsenter",
        "ip",
        "iptables-restore",
        "ipset",
        "curl",
        "getent",
        "tc",
        "iperf3",
        "sysctl",
        "hadolint",
        "gcc",
        "taskset",
        "sockperf",
    } <= found


def test_a_command_run_through_taskset_starts_taskset_and_the_command() -> None:
    assert programs.started_programs(["taskset", "-c", "1", "iperf3", "-s"]) == ["taskset", "iperf3"]
    assert programs.started_programs(["taskset", "0x2", "sockperf", "server"]) == ["taskset", "sockperf"]
    assert programs.started_programs(["taskset", "-c", None, "iperf3"]) == ["taskset", "iperf3"]


def test_every_program_the_code_and_tests_start_has_a_package_that_install_sh_installs(
    sites: list[Site],
) -> None:
    deb = set(install_packages())
    missing = []
    for site in sites:
        for program in filter(None, site.programs):
            package = programs.package_for(program)
            if package is None:
                missing.append(
                    f"{site.file}:{site.line} ({site.function}) starts {program}: no row in "
                    "scripts/packages.tsv"
                )
            elif package.source == "deb" and package.name not in deb:
                missing.append(
                    f"{site.file}:{site.line} starts {program}: install.sh does not install {package.name}"
                )
    assert missing == []


def test_no_call_site_starts_a_program_the_scan_cannot_name_unless_listed_with_its_reason(
    sites: list[Site],
) -> None:
    unresolved = {
        (s.file, s.function)
        for s in sites
        if None in s.programs[:1] or (len(s.programs) > 1 and s.programs[-1] is None)
    }
    assert unresolved - DYNAMIC.keys() == set(), "name the program literally, or add it to DYNAMIC with why"
    assert DYNAMIC.keys() - unresolved == set(), "DYNAMIC lists a call the scan now resolves: remove it"


def test_pip_rows_name_packages_that_pyproject_installs() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    for package in programs.table():
        if package.source == "pip" and package.name != "vethguard":
            assert re.search(rf'"{re.escape(package.name)}[<>=~!]', pyproject), package.name


@pytest.mark.parametrize("arch", programs.DEBIAN_ARCHES)
def test_the_image_installs_the_agent_packages_and_no_more(arch: str) -> None:
    image = install_packages("--image", f"--arch={arch}")
    assert image == programs.debian_packages(arch, ["agent"])
    host = install_packages(f"--arch={arch}")
    assert sorted(host) == sorted(programs.debian_packages(arch))
    assert len(set(host)) == len(host)


def test_the_kernel_headers_package_is_the_one_of_the_architecture() -> None:
    headers = {
        arch: [p for p in install_packages(f"--arch={arch}") if "headers" in p] for arch in ("amd64", "arm64")
    }
    assert headers == {"amd64": ["linux-headers-amd64"], "arm64": ["linux-headers-arm64"]}
    # without --arch: this machine's (dpkg --print-architecture)
    assert install_packages() == install_packages(f"--arch={programs.debian_arch()}")
    if platform.machine() == "x86_64":
        assert "linux-headers-amd64" in install_packages("--image")


def test_install_sh_refuses_an_architecture_it_knows_no_headers_package_for() -> None:
    done = subprocess.run(
        ["bash", str(INSTALL), "--list-packages", "--arch=riscv64"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "no kernel headers package known for architecture riscv64" in done.stderr


def test_install_sh_takes_an_architecture_only_to_list_packages() -> None:
    done = subprocess.run(
        ["bash", str(INSTALL), "--arch=arm64"], capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 2 and "--arch is for --list-packages" in done.stderr


def test_the_machine_names_map_to_debian_architectures() -> None:
    assert [programs.debian_arch(m) for m in ("x86_64", "aarch64", "riscv64")] == [
        "amd64",
        "arm64",
        "riscv64",
    ]


def test_a_package_name_takes_only_the_architecture_placeholder() -> None:
    [row] = programs.parse_table("deb:linux-headers-{arch}  agent  -\n")
    assert row.name == "linux-headers-{arch}"
    assert "apt-get install linux-headers-$(dpkg --print-architecture)" in row.install_hint()
    with pytest.raises(programs.PackageTableError, match="placeholder"):
        programs.parse_table("deb:linux-headers-{flavour}  agent  -\n")


def test_what_the_daemonset_containers_run_is_in_the_image() -> None:
    found = deploy_programs()
    assert found, "the DaemonSet's init container runs a shell script"
    image = {p for pkg in programs.table() if pkg.needed_by == "agent" for p in pkg.programs}
    for where, started in found:
        assert None not in started, where
        assert set(started) <= image, (where, set(started) - image)


def test_the_agent_starts_no_program(sites: list[Site]) -> None:
    # The agent runs pyroute2 and the kubernetes client in-process, and bcc in a child of its own
    # interpreter (controller/datapath/build.py: `sys.executable -m controller.datapath.build`):
    # nothing to install for it but libraries. Another program started from the agent's modules
    # would need an `agent` row.
    agent_modules = {
        "controller/agent/loop.py",
        "controller/agent/informers.py",
        "controller/agent/preflight.py",
        "controller/datapath/rtnl.py",
        "controller/agent/linkwatch.py",
        "controller/agent/health.py",
    }
    agent_modules |= {str(p.relative_to(REPO)) for p in (REPO / "controller" / "datapath").glob("*.py")}
    started = [s for s in sites if s.file in agent_modules]
    assert [s for s in started if s.programs != ["python3"]] == []
    assert [(s.file, s.function) for s in started] == [("controller/datapath/build.py", "compile_in_child")]


def test_the_package_table_rejects_a_malformed_row() -> None:
    with pytest.raises(programs.PackageTableError, match="needed-by"):
        programs.parse_table("deb:nftables  everyone  nft\n")
    with pytest.raises(programs.PackageTableError, match="source"):
        programs.parse_table("apt:nftables  lab  nft\n")


def test_a_missing_program_is_named_with_its_package() -> None:
    with pytest.raises(programs.MissingProgram) as info:
        programs.require("vethguard-no-such-program", "nft-surely-absent", purpose="lab apply")
    assert "lab apply: " in str(info.value)
    assert "vethguard-no-such-program is not installed" in str(info.value)


def test_a_missing_program_in_the_table_names_its_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(programs.shutil, "which", lambda name: None)
    with pytest.raises(
        programs.MissingProgram,
        match=r"nft is not installed \(the Debian package nftables: "
        r"`apt-get install nftables`",
    ):
        programs.require_command(["nsenter", "--net=/run/netns/x", "--", "nft", "-f", "-"])


def without(monkeypatch: pytest.MonkeyPatch, *absent: str) -> None:
    import shutil

    real = shutil.which
    monkeypatch.setattr(programs.shutil, "which", lambda name: None if name in absent else real(name))


def test_lab_up_names_a_missing_program_and_its_package_before_creating_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from controller.lab import cli

    without(monkeypatch, "nft", "dnsmasq")
    with pytest.raises(programs.MissingProgram) as info:
        cli.require_lab_programs(dns=False)
    assert str(info.value) == (
        "lab up: nft is not installed (the Debian package nftables: "
        "`apt-get install nftables`, or `bash scripts/install.sh`)"
    )
    with pytest.raises(programs.MissingProgram, match=r"dnsmasq is not installed .*dnsmasq-base"):
        cli.require_lab_programs(dns=True)


def test_a_service_update_without_nft_names_nftables_not_an_nsenter_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from controller.lab import svc

    without(monkeypatch, "nft")
    with pytest.raises(programs.MissingProgram, match=r"^nft is not installed \(the Debian package nftables"):
        svc.apply_nft("vg-no-such-namespace", "flush ruleset\n")


def test_cluster_dns_without_dnsmasq_names_dnsmasq_base(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from controller.lab import dns

    without(monkeypatch, "dnsmasq")
    server = dns.DnsServer(tmp_path, "vg-no-such-namespace", tmp_path / "dns.log")
    with pytest.raises(
        programs.MissingProgram,
        match=r"cluster DNS \(lab up --dns\): dnsmasq is not "
        r"installed \(the Debian package dnsmasq-base",
    ):
        server.start()
    assert not (tmp_path / "hosts.d").exists() and server.proc is None  # nothing started
