"""The image's package measurement (controller.bench.image_packages) without apt: parsing
apt-cache's dependency closure and sizes, and the Python closure with and without the test
extra, from this venv's own metadata."""

from __future__ import annotations

from collections.abc import Sequence

from controller.bench import image_packages

DEPENDS = """python3-bpfcc
  Depends: python3
  Depends: libbpfcc
libbpfcc
  Depends: libc6
<python3:any>
python3
libc6
"""
SHOW = """Package: python3-bpfcc
Installed-Size: 216

Package: libbpfcc
Installed-Size: 90000

Package: python3
Installed-Size: 100

Package: libc6
Installed-Size: 12000
"""


def test_the_closure_is_every_real_package_and_its_size_in_kib() -> None:
    assert image_packages.parse_closure(DEPENDS) == {"python3-bpfcc", "libbpfcc", "python3", "libc6"}
    calls: list[Sequence[str]] = []

    def run(args: Sequence[str]) -> str:
        calls.append(args)
        return DEPENDS if args[1] == "depends" else SHOW

    sizes = image_packages.debian(["python3-bpfcc"], run)
    assert sum(sizes.values()) == 216 + 90000 + 100 + 12000
    assert calls[1][-4:] == ["libbpfcc", "libc6", "python3", "python3-bpfcc"]  # shown once each


def test_the_test_extra_adds_the_test_tools_and_the_image_has_none() -> None:
    image, host = image_packages.python_closure(), image_packages.python_closure(["test"])
    assert {"kubernetes", "prometheus-client", "structlog", "pyroute2"} <= set(image)
    assert {"pytest", "selenium", "ruff", "mypy"} <= set(host) - set(image)
    assert all(size > 0 for size in image.values())
