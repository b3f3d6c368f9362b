"""`vethguard get` of Calico's projectcalico.org/v3 kinds, in calicoctl's table layout (pure:
raw objects + view in, text out).

    get globalnetworkpolicies|gnp                     NAME                 (-o wide: + ORDER SELECTOR)
    get networkpolicies.projectcalico.org|cnetpol     NAMESPACE NAME       (-o wide: + ORDER SELECTOR)
    get hostendpoints|hep                             NAME NODE            (-o wide: + INTERFACE IPS PROFILES)

The names: calicoctl's (globalnetworkpolicy, gnp, hostendpoint, hep, with their plurals), kubectl's
resource.group spellings (`globalnetworkpolicies.projectcalico.org`, and `.crd.projectcalico.org`,
the CRDs' group without Calico's API server), and for Calico's namespaced NetworkPolicy, whose
calicoctl names (networkpolicy, np, policy) would be Kubernetes' here, `cnetpol` / `cnetpols`
("Calico netpol") and `caliconetworkpolicy` / `caliconetworkpolicies`. ORDER is the spec's
(`<none>`: after every ordered policy), SELECTOR the spec's text (`all()` when empty, which is
what an empty selector means). An ERRORS column (the number of problems) appears when the
parser reported a problem for any object listed; each problem is then said on stderr: a policy
with one is enforced failed closed (controller/compiler/calico.py), a host endpoint's are
ignored or keep it off its node, as each message says. `-o json|yaml` prints the objects as a
List, as kubectl does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.compiler import calico
from controller.compiler.clusterview import ClusterView
from controller.core.errors import PolicyError
from controller.debug.render import meta_of, spec_of, table

Obj = Mapping[str, Any]


def _names(singular: str, *short: str, bare: bool = True) -> tuple[str, ...]:
    """calicoctl's names (`bare`: unless they are Kubernetes' too), the short ones, and kubectl's
    resource.group spellings."""
    plural = singular.removesuffix("y") + "ies" if singular.endswith("y") else singular + "s"
    spelled = (f"{singular}.{calico.GROUP}", f"{plural}.{calico.GROUP}", f"{plural}.crd.{calico.GROUP}")
    return (*((singular, plural) if bare else ()), *short, *spelled)


@dataclass(frozen=True)
class CalicoKind:
    kind: str  # calico.GLOBAL_KIND | NAMESPACED_KIND | HEP_KIND
    field: str  # of CalicoObjects
    names: tuple[str, ...]  # what `vethguard get` accepts
    headers: tuple[str, ...]
    wide: tuple[str, ...]  # added by -o wide

    @property
    def namespaced(self) -> bool:
        return self.kind == calico.NAMESPACED_KIND

    @property
    def resource(self) -> str:
        return f"{calico.PLURALS[self.kind]}.{calico.GROUP}"


KINDS = (
    CalicoKind(
        calico.GLOBAL_KIND,
        "global_policies",
        _names("globalnetworkpolicy", "gnp", "gnps"),
        ("NAME",),
        ("ORDER", "SELECTOR"),
    ),
    CalicoKind(
        calico.NAMESPACED_KIND,
        "namespaced_policies",
        _names(
            "networkpolicy", "cnetpol", "cnetpols", "caliconetworkpolicy", "caliconetworkpolicies", bare=False
        ),
        ("NAMESPACE", "NAME"),
        ("ORDER", "SELECTOR"),
    ),
    CalicoKind(
        calico.HEP_KIND,
        "host_endpoints",
        _names("hostendpoint", "hep", "heps"),
        ("NAME", "NODE"),
        ("INTERFACE", "IPS", "PROFILES"),
    ),
)
BY_NAME = {name: k for k in KINDS for name in k.names}
NAMES = tuple(BY_NAME)


def key(obj: Obj) -> tuple[str, str]:
    m = meta_of(obj)
    return str(m.get("namespace") or ""), str(m.get("name") or "")


def objects(view: ClusterView, kind: CalicoKind, namespace: str | None) -> list[Obj]:
    """The kind's raw objects (of one namespace for the namespaced kind, unless None), sorted."""
    objs: Sequence[Obj] = getattr(view.raw.calico, kind.field)
    if kind.namespaced and namespace is not None:
        objs = [o for o in objs if key(o)[0] == namespace]
    return sorted(objs, key=key)


def object_name(kind: CalicoKind, obj: Obj) -> str:
    """How the parsers name the object in their errors."""
    namespace, name = key(obj)
    if kind.kind == calico.HEP_KIND:
        return f"{calico.HEP_KIND} {name}"
    return calico.policy_object(kind.kind, namespace or "default" if kind.namespaced else None, name)


def errors_of(view: ClusterView, kind: CalicoKind, obj: Obj) -> list[PolicyError]:
    wanted = object_name(kind, obj)
    return [e for e in view.cluster.errors if e.object == wanted]


def _list(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else ""


def _order(spec: Mapping[str, Any]) -> str:
    order = spec.get("order")
    if order is None:
        return "<none>"
    return str(int(order)) if isinstance(order, float) and order.is_integer() else str(order)


def _cells(kind: CalicoKind, obj: Obj) -> tuple[list[Any], list[Any]]:
    """(the default columns, the wide ones) of one object."""
    namespace, name = key(obj)
    spec = spec_of(obj)
    if kind.kind == calico.HEP_KIND:
        iface = spec.get("interfaceName")
        return [name, spec.get("node") or ""], [
            iface if isinstance(iface, str) else "",
            _list(spec.get("expectedIPs")),
            _list(spec.get("profiles")),
        ]
    selector = spec.get("selector")
    selector = selector if isinstance(selector, str) and selector.strip() else "all()"
    return ([namespace, name] if kind.namespaced else [name]), [_order(spec), selector]


def get_text(view: ClusterView, kind: CalicoKind, objs: Sequence[Obj], wide: bool) -> str:
    headers = list(kind.headers) + (list(kind.wide) if wide else [])
    counts = [len(errors_of(view, kind, o)) for o in objs]
    if any(counts):
        headers.append("ERRORS")
    rows = []
    for obj, count in zip(objs, counts, strict=True):
        base, extra = _cells(kind, obj)
        row = base + (extra if wide else [])
        rows.append(row + ([count or ""] if any(counts) else []))
    return table(headers, rows)


def error_notes(view: ClusterView, kind: CalicoKind, objs: Sequence[Obj]) -> list[str]:
    """One line per problem the parser reported, saying what vethguard does about it."""
    after = "" if kind.kind == calico.HEP_KIND else " (the policy is enforced failed closed)"
    return [f"{e.object}: {e.field}: {e.message}{after}" for obj in objs for e in errors_of(view, kind, obj)]
