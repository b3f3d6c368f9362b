"""`vethguard demo`: placeholder until the guided demo lands (the lead replaces this module)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _run(args: argparse.Namespace) -> int:
    print("vethguard demo: not implemented yet", file=sys.stderr)
    return 1


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="guided demo (not implemented yet)")
    parser.set_defaults(func=_run)
