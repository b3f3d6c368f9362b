"""The test tree keeps its shared helpers in tests/support: no test module imports another test
module or a conftest, and the helpers that used to be copied between modules (the polling wait,
the root/bcc skip, the packet builders, the lab CLI runner) are defined only there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SUPPORT = TESTS / "support"

# a module path naming a test module or a conftest under tests/
FORBIDDEN_IMPORT = re.compile(r"^tests(\.\w+)*\.(test_\w+|conftest)$")
# helpers with one home each in tests/support; a function of one of these names elsewhere is a copy
ONE_HOME = {
    "wait_for": "waiting.py",
    "_wait_for": "waiting.py",
    "_wait": "waiting.py",
    "eventually": "waiting.py",
    "_bcc_missing": "root.py",
    "needs_root": "root.py",
    "checksum": "packets.py",
    "eth": "packets.py",
    "ipv4": "packets.py",
    "ipv6": "packets.py",
    "ipv4_packet": "packets.py",
    "ipv6_packet": "packets.py",
    "tcp": "packets.py",
    "udp": "packets.py",
    "frag6": "packets.py",
    "is_copy": "packets.py",
    "run_cli": "labs.py",
    "unique_lab_name": "labs.py",
    "lab_up": "labs.py",
}


def _modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in the module, nested ones included; `from tests.x import
    test_y` counts as importing tests.x.test_y."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def cross_test_imports(path: Path, source: str) -> list[str]:
    return [
        f"{path.relative_to(TESTS.parent)}:{line} imports {module}"
        for line, module in _imported(ast.parse(source))
        if FORBIDDEN_IMPORT.match(module)
    ]


def copied_helpers(path: Path, source: str) -> list[str]:
    if path.parent == SUPPORT:
        return []
    return [
        f"{path.relative_to(TESTS.parent)}:{node.lineno} defines {node.name} (its home: tests/support/"
        f"{ONE_HOME[node.name]})"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name in ONE_HOME
    ]


def machine_checks(path: Path, source: str) -> list[str]:
    """os.geteuid() outside tests/support/root.py: a skip rule of its own."""
    if path == SUPPORT / "root.py":
        return []
    return [
        f"{path.relative_to(TESTS.parent)}:{node.lineno} calls geteuid (use the root/lab/bcc markers)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr == "geteuid"
    ]


def test_no_test_module_imports_another_test_module_or_a_conftest() -> None:
    problems = [p for path in _modules() for p in cross_test_imports(path, path.read_text())]
    assert problems == []


def test_shared_helpers_are_defined_only_in_tests_support() -> None:
    problems = [p for path in _modules() for p in copied_helpers(path, path.read_text())]
    assert problems == []


def test_the_root_and_bcc_rule_is_only_in_tests_support_root() -> None:
    problems = [p for path in _modules() for p in machine_checks(path, path.read_text())]
    assert problems == []


def test_the_checks_catch_what_they_are_for() -> None:
    here = TESTS / "lab" / "test_example.py"
    assert cross_test_imports(here, "from tests.lab.test_raw_packets import checksum\n")
    assert cross_test_imports(here, "def f():\n    from tests.unit import test_agent_limits\n")
    assert cross_test_imports(here, "import tests.kernel.conftest\n")
    assert not cross_test_imports(
        here, "from tests.support.labs import Lab\nfrom tests.reference import cases\n"
    )
    assert copied_helpers(here, "def wait_for(cond, timeout):\n    pass\n")
    assert not copied_helpers(SUPPORT / "waiting.py", "def wait_for(cond, timeout):\n    pass\n")
    assert machine_checks(here, "import os\nskip = os.geteuid() != 0\n")


def test_every_model_file_is_used() -> None:
    sources = "".join(path.read_text() for path in _modules())
    unused = [m.name for m in sorted((SUPPORT / "models").glob("*.yaml")) if f'"{m.name}"' not in sources]
    assert unused == []
