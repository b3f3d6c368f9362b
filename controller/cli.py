"""The `vethguard` command line: one entry point, subcommands registered by their modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from controller.core.errors import VethguardError


def version() -> str:
    """The installed package's version (pyproject.toml), or "unknown" outside an install."""
    from importlib import metadata

    try:
        return metadata.version("vethguard")
    except metadata.PackageNotFoundError:
        return "unknown"


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it rejects arguments it does not know with its own usage line
    (argparse would leave them to the top-level parser, whose usage says nothing useful)."""

    def parse_known_args(  # type: ignore[override]  # typeshed overloads it on the namespace
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


def build_parser(prog: str = "vethguard") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Kubernetes NetworkPolicy enforced in the kernel with tc BPF programs on pod veths.",
    )
    parser.add_argument("--version", action="version", version=f"{prog} {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)

    from controller.agent.agent_read import register as register_agent_read
    from controller.agent.cli import register as register_agent
    from controller.bench.cli import register as register_bench
    from controller.cni.install import register as register_cni_install
    from controller.cni.uninstall import register as register_uninstall
    from controller.core.completion import register as register_completion
    from controller.debug.cli import register as register_debug
    from controller.debug.convert import register as register_convert
    from controller.debug.doctor import register as register_doctor
    from controller.debug.ui.server import register as register_ui
    from controller.debug.whatif_cli import register as register_whatif
    from controller.lab.cli import register as register_lab
    from controller.lab.demo import register as register_demo

    register_agent(sub)
    register_agent_read(sub)
    register_lab(sub)
    register_demo(sub)
    register_debug(sub)
    register_convert(sub)
    register_doctor(sub)
    register_whatif(sub)
    register_ui(sub)
    register_bench(sub)
    register_cni_install(sub)
    register_completion(sub, parser)
    register_uninstall(sub)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "vethguard") -> int:
    """Run one subcommand. The one error handler of every subcommand: a VethguardError, and a
    failure of the Kubernetes API or kubeconfig (controller.agent.api_errors), is printed as
    `error: ...` on stderr (exit 1) without a traceback; a closed pipe (`observe -f | head`) and
    Ctrl-C end quietly."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except VethguardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from controller.agent.api_errors import describe

        line = describe(exc)
        if line is None:
            raise  # a bug: keep its traceback
        print(f"error: {line}", file=sys.stderr)
        return 1
    return int(rc or 0)


def kubectl_main() -> int:
    """`kubectl vethguard ...`: kubectl runs the kubectl-vethguard executable with the rest of the line."""
    return main(sys.argv[1:], prog="kubectl vethguard")


if __name__ == "__main__":
    sys.exit(main())
