"""`vethguard whatif`: a proposed policy change replayed against the flows the agents kept (pure).

    report = whatif(raw, Change(apply=[doc, ...], delete=["netpol/x/deny"]), records)

`raw` is the live state (controller.debug.inputs: Target.objects()); the change is compiled beside
it, never applied: the live objects with the change's documents created or replaced and its
references deleted make a second ClusterView. Every flow record (controller.agent.flow_record,
as `vethguard observe -o json` prints them) is replayed against both views with the decision
`vethguard explain` makes (controller.debug.explain: the source's egress, the destination's
ingress and, towards a node, its Calico host endpoints on arrival; a flow passes only if every
hook allows it). Records are deduplicated by (from, to, port, protocol, address family) first:
an agent's aggregated record, and the two records of an allowed connection (one per hook), are
one flow here. Names are the live view's for the recorded addresses; the replay is by address.

Not replayed (counted in `skipped` by reason): what is no policy decision of a new connection
(Calico Log events, malformed or spoofed packets, fragments, drops for want of an endpoint or
conntrack room, a Service frontend's deferred event: its backend's own record is replayed).

A document of the change that the compiler's parsers or the API server's validation
(controller.lab.validation) would object to makes whatif raise ChangeError naming every problem
(object, field, message): an invalid policy is enforced failed closed, so a report made from it
would not say what applying it does.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.compiler import calico, cnp
from controller.compiler.builder import cluster_from_objects
from controller.compiler.calico import CalicoObjects
from controller.compiler.clusterview import ClusterView, RawObjects
from controller.core.errors import VethguardError
from controller.debug import calico as calico_debug
from controller.debug import cnp as cnp_debug
from controller.debug import explain as explain_mod
from controller.debug import verdict_model as vm
from controller.debug.netpol import NAMES as NETPOL_NAMES
from controller.lab import validation

Obj = Mapping[str, Any]

# Records that are no policy decision of a new connection (module docstring)
NOT_REPLAYED = frozenset(
    {
        "LOG_CALICO",
        "ALLOW_CT",
        "ALLOW_REPLY",
        "ALLOW_NON_IP",
        "ALLOW_ICMP6_CTRL",
        "ALLOW_FRAG",
        "ALLOW_RELATED",
        "ALLOW_DEFERRED",
        "DROP_MALFORMED",
        "DROP_FRAG_UNKNOWN",
        "DROP_PENDING",
        "DROP_NO_ENDPOINT",
        "DROP_CT_FULL",
        "DROP_SPOOFED",
        "DROP_DEFERRED_UNKNOWN",
    }
)


class ChangeError(VethguardError):
    """The change cannot be compiled as given: every problem, each naming object and field."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("the change is invalid:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class PolicyKind:
    kind: str
    group: str
    namespaced: bool
    names: tuple[str, ...]  # what --delete accepts (any case)
    field: str  # of RawObjects, or "calico.<field of CalicoObjects>"

    @property
    def validation_kind(self) -> str:
        return validation.qualified_kind(self.kind, self.group) if self.group == calico.GROUP else self.kind


POLICY_KINDS = (
    PolicyKind("NetworkPolicy", "networking.k8s.io", True, NETPOL_NAMES, "policies"),
    PolicyKind(cnp.KIND, cnp.GROUP, False, cnp_debug.NAMES, "cluster_policies"),
    *(
        PolicyKind(k.kind, calico.GROUP, k.namespaced, k.names, f"calico.{k.field}")
        for k in calico_debug.KINDS
    ),
)
_BY_NAME = {name.lower(): k for k in POLICY_KINDS for name in k.names}


@dataclass(frozen=True)
class ObjectRef:
    kind: PolicyKind
    namespace: str | None  # None for a cluster-wide kind
    name: str

    def __str__(self) -> str:
        return (
            f"{self.kind.kind} {self.namespace}/{self.name}"
            if self.namespace
            else f"{self.kind.kind} {self.name}"
        )


def parse_ref(text: str) -> ObjectRef:
    """KIND/NAMESPACE/NAME or KIND/NAME (a namespaced kind: namespace "default"); KIND is any
    of the names `vethguard get` takes (netpol, cnp, gnp, cnetpol, hep, ...), in any case."""
    parts = text.split("/")
    kind = _BY_NAME.get(parts[0].lower())
    if kind is None or len(parts) not in (2, 3) or not all(parts[1:]):
        raise VethguardError(
            f"--delete {text}: give KIND/NAMESPACE/NAME or KIND/NAME, KIND one of "
            "netpol, cnp, gnp, cnetpol, hep (or their long names)"
        )
    if len(parts) == 3 and not kind.namespaced:
        raise VethguardError(f"--delete {text}: a {kind.kind} has no namespace (give {parts[0]}/NAME)")
    namespace = (parts[1] if len(parts) == 3 else "default") if kind.namespaced else None
    return ObjectRef(kind, namespace, parts[-1])


def kind_of(doc: Obj) -> PolicyKind | None:
    """The policy kind of a document by apiVersion's group and kind (None: not a policy kind)."""
    group = str(doc.get("apiVersion") or "").rpartition("/")[0]
    return next((k for k in POLICY_KINDS if (k.kind, k.group) == (doc.get("kind"), group)), None)


@dataclass(frozen=True)
class Change:
    """A proposed change: documents to create or replace (kind, apiVersion, metadata, spec as for
    kubectl apply; a namespaced one without a namespace goes to "default"), and objects to
    delete (ObjectRef, or its text: KIND/NAMESPACE/NAME or KIND/NAME)."""

    apply: Sequence[Obj] = ()
    delete: Sequence[ObjectRef | str] = ()


@dataclass(frozen=True)
class Decision:
    """A flow's verdict in one state, and the hook that decided it (for an allowed flow: the
    one a rule allowed it at, the destination's ingress first)."""

    verdict: str  # allowed | denied | audit (allowed only because audit-mode policies do not drop)
    direction: str  # egress (of the source), ingress (of the destination), host (a host endpoint)
    endpoint: str | None
    reason: str
    tier: str | None
    policy: str | None
    rule: str  # the deciding rule, or what decided without one ("isolated by x/deny", ...)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FlowChange:
    source: str
    destination: str
    port: int | None
    protocol: str
    family: int
    src_ip: str
    dst_ip: str
    events: int  # the records' event count (an aggregated record counts its repeats)
    nodes: tuple[str, ...]  # the nodes whose agents kept it
    before: Decision
    after: Decision

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.destination,
            "port": self.port,
            "protocol": self.protocol,
            "family": self.family,
            "src_ip": self.src_ip,
            "dst_ip": self.dst_ip,
            "events": self.events,
            "nodes": list(self.nodes),
            "before": self.before.to_json(),
            "after": self.after.to_json(),
        }


@dataclass
class WhatIfReport:
    objects: list[dict[str, str | None]]  # {"kind", "namespace", "name", "action": created|replaced|deleted}
    changed: list[FlowChange]  # every flow whose verdict changes, sorted by from, to, protocol, port
    flows: int  # distinct flows replayed
    records: int  # records read
    nodes: list[str]  # the nodes whose records were replayed
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records not replayed
    # namespace -> {"newly_denied": n, "newly_allowed": n, "other": n}: a flow counts in the
    # namespace of each of its pods (once when both are in one); "other" is allowed <-> audit
    summary: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "changed": [c.to_json() for c in self.changed],
            "flows": self.flows,
            "records": self.records,
            "nodes": self.nodes,
            "skipped": self.skipped,
            "summary": self.summary,
        }


def whatif(raw: RawObjects, change: Change, flows: Iterable[Obj]) -> WhatIfReport:
    """Replay `flows` (flow records) against the live state `raw` and against `raw` with `change`
    (module docstring). Raises ChangeError when a document is invalid or a deleted object or a
    document's kind is unknown; never does I/O."""
    after_raw, objects = changed_objects(raw, change)
    before, after = ClusterView(raw), ClusterView(after_raw)
    groups: dict[tuple[str, str, int | None, str, int], list[Obj]] = {}
    skipped: Counter[str] = Counter()
    records = 0
    nodes: set[str] = set()
    for rec in flows:
        records += 1
        if rec.get("reason") in NOT_REPLAYED or not rec.get("src_ip") or not rec.get("dst_ip"):
            skipped[str(rec.get("reason"))] += 1
            continue
        nodes.add(str(rec.get("node")))
        src, dst = str(rec["src_ip"]), str(rec["dst_ip"])
        family = 6 if ":" in src else 4
        key = (before.who(src), before.who(dst), rec.get("port"), str(rec.get("protocol")).upper(), family)
        groups.setdefault(key, []).append(rec)
    changed = []
    for (who_src, who_dst, port, proto, family), recs in groups.items():
        src, dst = str(recs[0]["src_ip"]), str(recs[0]["dst_ip"])
        old, new = decide(before, src, dst, port, proto), decide(after, src, dst, port, proto)
        if old.verdict == new.verdict:
            continue
        events = sum(int(r.get("count") or 1) for r in recs)
        where = tuple(sorted({str(r.get("node")) for r in recs}))
        changed.append(FlowChange(who_src, who_dst, port, proto, family, src, dst, events, where, old, new))
    changed.sort(key=lambda c: (c.source, c.destination, c.protocol, c.port or 0, c.family))
    return WhatIfReport(
        objects,
        changed,
        len(groups),
        records,
        sorted(nodes),
        dict(sorted(skipped.items())),
        _summary(before, changed),
    )


def decide(view: ClusterView, src: str, dst: str, port: int | None, protocol: str) -> Decision:
    """The verdict of a new connection src -> dst:port (addresses) as `vethguard explain` makes it."""
    e = explain_mod.explain(view, src, dst, port or 0, protocol)
    audit = any(h.reason == vm.ALLOW_AUDIT for h in (e.egress, e.ingress))
    verdict = "denied" if not e.allowed else "audit" if audit else "allowed"
    pods = [e.egress, e.ingress]
    if not e.allowed:
        half = next((h for h in pods if not h.allowed), None)
        if half is None:
            return _host(next(h for h in e.host if not h.allowed), verdict)
    else:
        half = next((h for h in (e.ingress, e.egress) if h.deciding is not None), None)
        if half is None:
            hosts = [h for h in e.host if h.rule is not None]
            if hosts:
                return _host(hosts[0], verdict)
            half = e.ingress if e.ingress.endpoint is not None else e.egress
    return Decision(
        verdict,
        "ingress" if half is e.ingress else "egress",
        half.endpoint,
        half.reason,
        half.tier,
        half.policies[0] if half.policies else None,
        _rule_text(half),
    )


def _rule_text(half: explain_mod.Half) -> str:
    if half.rule is not None:
        return half.rule
    where = f"{'ingress' if half.direction == vm.DIR_INGRESS else 'egress'} of {half.endpoint}"
    isolated = ", ".join(half.policies)
    return {
        vm.DROP_POLICY: f"{where}: isolated by {isolated}, no rule matches",
        vm.ALLOW_AUDIT: f"{where}: isolated (audit) by {isolated}, no rule matches",
        vm.DROP_CALICO_END: f"{where}: end of Calico's tier ({isolated})",
        vm.ALLOW_HOST: f"{where}: its own node (always allowed)",
        vm.NOT_ENFORCED: "no pod on either side (not enforced)",
    }.get(half.reason, f"{where}: not isolated")


def _host(h: explain_mod.explain_hep.HostHalf, verdict: str) -> Decision:
    v = h.verdict
    policy = (v.rule.policy if v.rule is not None else None) or (v.policies[0] if v.policies else None)
    rule = (
        str(v.rule) if v.rule is not None else f"host endpoint {h.host_endpoint}: {v.reason} ({v.policy_set})"
    )
    return Decision(verdict, "host", f"node/{h.node}:{h.interface or '?'}", v.reason, "Calico", policy, rule)


def _summary(view: ClusterView, changed: Sequence[FlowChange]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for c in changed:
        what = (
            "newly_denied"
            if c.after.verdict == "denied"
            else "newly_allowed"
            if c.before.verdict == "denied"
            else "other"
        )
        spaces = {p.namespace for p in (view.pod_by_ip(c.src_ip), view.pod_by_ip(c.dst_ip)) if p is not None}
        for ns in spaces or {"-"}:
            counts = out.setdefault(ns, {"newly_denied": 0, "newly_allowed": 0, "other": 0})
            counts[what] += 1
    return dict(sorted(out.items()))


# -- the change ---------------------------------------------------------------------------------


def _ref_of(kind: PolicyKind, doc: Obj) -> ObjectRef:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    namespace = str(meta.get("namespace") or "default") if kind.namespaced else None
    return ObjectRef(kind, namespace, str(meta.get("name") or ""))


def _matches(obj: Obj, ref: ObjectRef) -> bool:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or "default" if ref.kind.namespaced else None
    return (ns, meta.get("name")) == (ref.namespace, ref.name)


def _get(raw: RawObjects, kind: PolicyKind) -> list[dict[str, Any]]:
    top, _, sub = kind.field.partition(".")
    return list(getattr(raw.calico, sub) if sub else getattr(raw, top))


def _with(raw: RawObjects, kind: PolicyKind, objs: list[dict[str, Any]]) -> RawObjects:
    top, _, sub = kind.field.partition(".")
    if sub:
        return dataclasses.replace(raw, calico=raw.calico._replace(**{sub: objs}))
    if top == "policies":
        return dataclasses.replace(raw, policies=objs)
    return dataclasses.replace(raw, cluster_policies=objs)


def problems(docs: Sequence[tuple[PolicyKind, dict[str, Any]]]) -> list[str]:
    """What the compiler's parsers and the API server's validation find in the documents."""
    by_field: dict[str, list[dict[str, Any]]] = {}
    for kind, doc in docs:
        by_field.setdefault(kind.field, []).append(doc)
    cal = CalicoObjects(*(by_field.get(f"calico.{name}", []) for name in CalicoObjects._fields))
    parsed = cluster_from_objects(
        (), (), by_field.get("policies", []), (), by_field.get("cluster_policies", []), calico=cal
    )
    out = [str(e) for e in parsed.errors]
    said = {(e.object, e.field) for e in parsed.errors}
    for kind, doc in docs:
        ref = _ref_of(kind, doc)
        for err in validation.validate(kind.validation_kind, kind.namespaced, doc):
            # the parser's problem on a field, or on the field it is part of, is said once
            if not any(obj == str(ref) and _within(err.field, fld) for obj, fld in said):
                out.append(f"{ref}: {err}")
    return list(dict.fromkeys(out))


def _within(fld: str, outer: str) -> bool:
    return fld == outer or fld.startswith((f"{outer}.", f"{outer}["))


def changed_objects(raw: RawObjects, change: Change) -> tuple[RawObjects, list[dict[str, str | None]]]:
    """`raw` with the change made, and what it did to each object (created, replaced, deleted)."""
    errors: list[str] = []
    docs: list[tuple[PolicyKind, dict[str, Any]]] = []
    for i, doc in enumerate(change.apply):
        kind = kind_of(doc) if isinstance(doc, Mapping) else None
        if kind is None:
            what = (
                f"{doc.get('apiVersion')} {doc.get('kind')}"
                if isinstance(doc, Mapping)
                else type(doc).__name__
            )
            errors.append(
                f"document {i + 1}: {what} is not a policy kind (NetworkPolicy, ClusterNetworkPolicy, "
                "Calico's GlobalNetworkPolicy, NetworkPolicy, HostEndpoint)"
            )
            continue
        doc = dict(doc)
        if kind.namespaced and not (doc.get("metadata") or {}).get("namespace"):
            doc["metadata"] = {**(doc.get("metadata") or {}), "namespace": "default"}
        docs.append((kind, doc))
    errors += problems(docs)
    refs = [r if isinstance(r, ObjectRef) else parse_ref(r) for r in change.delete]
    actions: list[dict[str, str | None]] = []
    out = raw
    for ref in refs:
        objs = _get(out, ref.kind)
        kept = [o for o in objs if not _matches(o, ref)]
        if len(kept) == len(objs):
            errors.append(f"{ref}: not found (nothing to delete)")
        out = _with(out, ref.kind, kept)
        actions.append(
            {"kind": ref.kind.kind, "namespace": ref.namespace, "name": ref.name, "action": "deleted"}
        )
    seen: set[ObjectRef] = set(refs)
    for kind, doc in docs:
        ref = _ref_of(kind, doc)
        if ref in seen:
            errors.append(f"{ref}: named twice in the change")
        seen.add(ref)
        objs = _get(out, kind)
        kept = [o for o in objs if not _matches(o, ref)]
        out = _with(out, kind, [*kept, doc])
        action = "replaced" if len(kept) < len(objs) else "created"
        actions.append({"kind": kind.kind, "namespace": ref.namespace, "name": ref.name, "action": action})
    if errors:
        raise ChangeError(errors)
    return out, actions
