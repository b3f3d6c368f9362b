"""Print Calico's older manifests (calicoctl's v1 API: kind: policy, kind: hostEndpoint) in their
projectcalico.org/v3 form (GlobalNetworkPolicy, HostEndpoint) as YAML, for review before applying;
v3 documents pass through unchanged. (The conversion itself is pure:
controller/compiler/calico_convert.py; this module reads, loads and prints.)"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from controller.compiler.calico_convert import ConvertError, convert_documents
from controller.core.errors import VethguardError


class ConvertFailed(VethguardError):
    """The input cannot be read, loaded or converted."""


class NoSexagesimalLoader(yaml.SafeLoader):
    """YAML 1.1 as SafeLoader reads it, except that `1:30` stays the string "1:30" (SafeLoader
    reads it as the base-60 integer 90): Calico's port ranges come through as written."""


NoSexagesimalLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
NoSexagesimalLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
NoSexagesimalLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_documents(text: str) -> list[Any]:
    try:
        return list(yaml.load_all(text, Loader=NoSexagesimalLoader))
    except yaml.YAMLError as exc:
        raise ConvertFailed(f"not YAML: {exc}") from exc


def convert_text(text: str) -> str:
    """The v3 documents of `text` as multi-document YAML (apiVersion, kind, metadata, spec first)."""
    try:
        documents = convert_documents(load_documents(text))
    except ConvertError as exc:
        raise ConvertFailed(str(exc)) from exc
    return str(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False))


def run(args: argparse.Namespace) -> int:
    if args.filename == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.filename).read_text()
        except OSError as exc:
            raise ConvertFailed(f"{args.filename}: {exc.strerror}") from exc
    sys.stdout.write(convert_text(text))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="print Calico v1 (calicoctl) policies and host endpoints as projectcalico.org/v3 YAML",
        description=__doc__,
    )
    p.add_argument("-f", "--filename", required=True, metavar="FILE|-", help="the manifests, or - for stdin")
    p.set_defaults(func=run)
