"""What the agent's image carries beside a host install: the Debian packages `scripts/install.sh
--image` installs (with their dependency closure, from apt-cache) and the Python distributions
the package needs without its test extra, against what `scripts/install.sh` installs on a host
(the lab, benchmarks and tests too). Sizes are Debian's Installed-Size and the distributions'
recorded file sizes: a listing of packages, not an image build (these machines have no
container engine), so the shared base (debian:bookworm-slim's own packages) counts in both.

    python -m controller.bench.image_packages --results docs/bench   # image-packages.{json,md}
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from controller.bench.common import write_json

REPO = Path(__file__).resolve().parents[2]
APT_DEPENDS = ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts"]
APT_DEPENDS += ["--no-breaks", "--no-replaces", "--no-enhances"]


def install_list(image: bool) -> list[str]:
    """The Debian packages scripts/install.sh installs (--image: the agent's only)."""
    args = ["bash", str(REPO / "scripts" / "install.sh"), "--list-packages", *(["--image"] if image else [])]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


def parse_closure(text: str) -> set[str]:
    """Package names of `apt-cache depends --recurse` output: unindented lines, virtual
    packages (<name>) left out."""
    return {line.strip() for line in text.splitlines() if line and not line[0].isspace() and "<" not in line}


def parse_sizes(text: str) -> dict[str, int]:
    """Package -> Installed-Size (KiB) from `apt-cache show` output."""
    sizes: dict[str, int] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1].strip()
        elif line.startswith("Installed-Size: ") and name is not None:
            sizes.setdefault(name, int(line.split(": ", 1)[1]))
    return sizes


def apt(args: Sequence[str]) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True).stdout


def debian(packages: Sequence[str], run: Callable[[Sequence[str]], str] = apt) -> dict[str, int]:
    """The closure of `packages` -> Installed-Size (KiB)."""
    names = sorted(parse_closure(run([*APT_DEPENDS, *packages])))
    return parse_sizes(run(["apt-cache", "show", "--no-all-versions", *names]))


def _dist_bytes(dist: metadata.Distribution) -> int:
    """Bytes of a distribution's files: as its RECORD lists them, else (a Debian package's
    egg-info records none) the files of its top-level packages and modules."""
    recorded = sum(f.size or 0 for f in dist.files or ())
    if recorded:
        return recorded
    base = Path(str(dist.locate_file("")))
    total = 0
    for top in (dist.read_text("top_level.txt") or "").split():
        for path in (base / top, base / f"{top}.py"):
            if path.is_dir():
                total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            elif path.is_file():
                total += path.stat().st_size
    return total


def python_closure(extras: Iterable[str] = ()) -> dict[str, int]:
    """vethguard's Python distributions (with these extras) -> bytes of their recorded files."""
    wanted = set(extras)
    out: dict[str, int] = {}
    todo = [("vethguard", wanted)]
    while todo:
        name, with_extras = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in out:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-conditional requirement not installed here
        out[key] = _dist_bytes(dist)
        for req in dist.requires or ():
            spec, _, marker = req.partition(";")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if extra and extra.group(1) not in with_extras:
                continue
            todo.append((re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0], set()))
    return out


def measure() -> dict[str, Any]:
    image_deb, host_deb = debian(install_list(True)), debian(install_list(False))
    image_py, host_py = python_closure(), python_closure(["test"])
    top_image, top_host = install_list(True), install_list(False)
    return {
        "image": {"debian": image_deb, "python": image_py, "installs": top_image},
        "host": {"debian": host_deb, "python": host_py, "installs": top_host},
        "host_only_installs": [p for p in top_host if p not in top_image],
        "host_only_python": sorted(set(host_py) - set(image_py)),
    }


def markdown(doc: dict[str, Any]) -> str:
    def mb(kib: float) -> str:
        return f"{kib / 1024:.0f} MB"

    rows = []
    for what, label in (("image", "image (`install.sh --image`)"), ("host", "host (`install.sh`)")):
        d = doc[what]
        rows.append(
            f"| {label} | {len(d['installs'])} | {len(d['debian'])} | {mb(sum(d['debian'].values()))} | "
            f"{len(d['python'])} | {mb(sum(d['python'].values()) / 1024)} |"
        )
    return "\n".join(
        [
            "| install | Debian packages asked | with dependencies | installed size "
            "| Python distributions | size |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Only on a host: " + ", ".join(doc["host_only_installs"]) + ".",
            "Python, only on a host: " + ", ".join(doc["host_only_python"]) + ".",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.bench.image_packages", description=__doc__)
    p.add_argument("--results", type=Path, help="write image-packages.{json,md} here")
    args = p.parse_args(argv)
    doc = measure()
    table = markdown(doc)
    print(table)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        write_json(args.results / "image-packages.json", doc)
        (args.results / "image-packages.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
