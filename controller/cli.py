"""The `vethguard` command line: one entry point, subcommands registered by their modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser(prog: str = "vethguard") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Kubernetes NetworkPolicy enforced in the kernel with tc BPF programs on pod veths.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from controller.agent.cli import register as register_agent
    from controller.bench.cli import register as register_bench
    from controller.cni.install import register as register_cni_install
    from controller.debug.cli import register as register_debug
    from controller.lab.cli import register as register_lab
    from controller.lab.demo import register as register_demo

    register_agent(sub)
    register_lab(sub)
    register_demo(sub)
    register_debug(sub)
    register_bench(sub)
    register_cni_install(sub)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "vethguard") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
