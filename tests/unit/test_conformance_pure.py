"""Replay every conformance scenario through model -> compute -> lookup (no kernel, no lab).

Scenarios live in <repo>/../shared/conformance/*.yaml (README there). Pods get synthetic
addresses on two nodes (round-robin, lab addressing: node i = 10.244.i.0/24,
fd00:10:244:i::/64, node address .1 / ::1), external hosts keep the addresses their model
gives. A probe to a port the destination does not declare is "not connected" (nothing
listens there in the lab). Every scenario runs twice: with IPv4 pod addresses, and with IPv6
pod addresses (placeholders then expand to IPv6; checks that involve an external host, which
is IPv4-only, are skipped in that run).
"""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.compiler.builder import cluster_from_objects
from controller.compiler.compute import compute
from controller.compiler.desired_state import NodeDesired
from controller.compiler.model import ClusterState
from controller.debug.verdict_model import verdict

CONFORMANCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "conformance"
ORDER = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]
NODES = ["node-1", "node-2"]


def _load() -> list[tuple[str, dict[str, Any]]]:
    if not CONFORMANCE_DIR.is_dir():
        return []
    out = []
    for f in sorted(CONFORMANCE_DIR.glob("*.yaml")):
        for sc in yaml.safe_load(f.read_text()) or []:
            out.append((f.name, sc))
    return out


SCENARIOS = _load()


def _default_model() -> dict[str, Any]:
    ports = [
        {"port": port, "protocol": proto, "name": f"serve-{port}-{proto.lower()}"}
        for port in (80, 81)
        for proto in ("TCP", "UDP", "SCTP")
    ]
    return {
        "namespaces": [{"name": ns, "labels": {"ns": ns}} for ns in "xyz"],
        "pods": [
            {"namespace": ns, "name": p, "labels": {"pod": p}, "ports": ports} for ns in "xyz" for p in "abc"
        ],
        "externals": [],
    }


class Sim:
    """The scenario's cluster as raw API objects, plus the address plan."""

    def __init__(self, model: dict[str, Any], family: int) -> None:
        self.family = family
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.served: dict[str, set[tuple[int, str]]] = {}
        self.pod_node: dict[str, str] = {}
        self.pod_ip: dict[str, dict[int, str]] = {}
        self.ext_ip: dict[str, str] = {}
        for ns in model.get("namespaces", []):
            self.namespaces[ns["name"]] = {
                "metadata": {
                    "name": ns["name"],
                    "labels": {**(ns.get("labels") or {}), "kubernetes.io/metadata.name": ns["name"]},
                }
            }
        counters = {n: 10 for n in NODES}
        for i, p in enumerate(model.get("pods", [])):
            key = f"{p['namespace']}/{p['name']}"
            node = NODES[i % len(NODES)]
            n = NODES.index(node) + 1
            host = counters[node]
            counters[node] += 1
            v4, v6 = f"10.244.{n}.{host}", f"fd00:10:244:{n}::{host:x}"
            self.pod_node[key] = node
            self.pod_ip[key] = {4: v4, 6: v6}
            ports = p.get("ports") or []
            self.served[key] = {(int(pp["port"]), pp.get("protocol", "TCP")) for pp in ports}
            if p["namespace"] not in self.namespaces:
                self.namespaces[p["namespace"]] = {
                    "metadata": {
                        "name": p["namespace"],
                        "labels": {"kubernetes.io/metadata.name": p["namespace"]},
                    }
                }
            self.pods[key] = {
                "metadata": {
                    "namespace": p["namespace"],
                    "name": p["name"],
                    "labels": dict(p.get("labels") or {}),
                },
                "spec": {
                    "nodeName": node,
                    "containers": [
                        {
                            "name": f"c{j}",
                            "ports": [
                                {
                                    k: v
                                    for k, v in (
                                        ("containerPort", pp["port"]),
                                        ("protocol", pp.get("protocol", "TCP")),
                                        ("name", pp.get("name")),
                                    )
                                    if v is not None
                                }
                            ],
                        }
                        for j, pp in enumerate(ports)
                    ],
                },
                "status": {"phase": "Running", "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]},
            }
        for ext in model.get("externals", []) or []:
            ip = ext["ip"][0] if isinstance(ext["ip"], list) else ext["ip"]
            self.ext_ip[ext["name"]] = ip
            self.served[f"ext/{ext['name']}"] = {
                (int(pp["port"]), pp.get("protocol", "TCP")) for pp in ext.get("ports") or []
            }
        self.nodes = [
            {
                "metadata": {"name": name},
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": f"10.244.{i}.1"},
                        {"type": "InternalIP", "address": f"fd00:10:244:{i}::1"},
                    ]
                },
            }
            for i, name in enumerate(NODES, 1)
        ]
        self.desired: dict[str, NodeDesired] = {}

    # -- placeholders ---------------------------------------------------------------------

    _PH = re.compile(r"\{\{\s*ip\s+([^\s|}]+)\s*(?:\|\s*(host|net\s+\d+)\s*)?\}\}")

    def _subst(self, s: str) -> str:
        def repl(m: re.Match[str]) -> str:
            ip = ipaddress.ip_address(self.pod_ip[m.group(1)][self.family])
            mod = m.group(2)
            if mod is None:
                return str(ip)
            if mod == "host":
                return f"{ip}/{ip.max_prefixlen}"
            bits = int(mod.split()[1])
            return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))

        return self._PH.sub(repl, s)

    def substitute(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self._subst(obj)
        if isinstance(obj, list):
            return [self.substitute(x) for x in obj]
        if isinstance(obj, dict):
            return {k: self.substitute(v) for k, v in obj.items()}
        return obj

    # -- steps ----------------------------------------------------------------------------

    def apply(self, manifests: list[dict[str, Any]]) -> None:
        for m in manifests:
            m = self.substitute(copy.deepcopy(m))
            kind = m.get("kind")
            meta = m.get("metadata", {})
            if kind == "NetworkPolicy":
                self.policies[f"{meta.get('namespace', 'default')}/{meta['name']}"] = m
            elif kind == "Namespace":
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
                self.namespaces[meta["name"]] = m
            elif kind == "Pod":
                key = f"{meta.get('namespace', 'default')}/{meta['name']}"
                self.pods[key]["metadata"]["labels"] = dict(meta.get("labels") or {})
            else:
                raise AssertionError(f"unsupported kind in apply: {kind}")

    def delete(self, refs: list[dict[str, Any]]) -> None:
        for r in refs:
            kind = r["kind"]
            if kind == "NetworkPolicy":
                self.policies.pop(f"{r.get('namespace', 'default')}/{r['name']}", None)
            else:
                raise AssertionError(f"unsupported kind in delete: {kind}")

    def label(self, spec: dict[str, Any]) -> None:
        labels = dict(spec.get("labels") or {})
        if spec["kind"] == "Namespace":
            labels["kubernetes.io/metadata.name"] = spec["name"]
            self.namespaces[spec["name"]]["metadata"]["labels"] = labels
        else:
            self.pods[f"{spec['namespace']}/{spec['name']}"]["metadata"]["labels"] = labels

    def compile(self) -> ClusterState:
        cluster = cluster_from_objects(
            copy.deepcopy(list(self.namespaces.values())),
            copy.deepcopy(list(self.pods.values())),
            copy.deepcopy(list(self.policies.values())),
            copy.deepcopy(self.nodes),
        )
        self.desired = {n: compute(cluster, n) for n in NODES}
        return cluster

    # -- probes ---------------------------------------------------------------------------

    def connected(self, src: str, dst: str, port: int, protocol: str) -> bool:
        if (port, protocol) not in self.served.get(dst, set()):
            return False
        return self.allowed(src, dst, port, protocol)

    def allowed(self, src: str, dst: str, port: int, protocol: str) -> bool:
        def side(who: str) -> tuple[NodeDesired | None, str]:
            if who.startswith("ext/"):
                return None, self.ext_ip[who[4:]]
            return self.desired[self.pod_node[who]], who

        sd, s = side(src)
        dd, d = side(dst)
        return verdict(sd, dd, s, d, protocol, port, family=self.family).allowed


def _ids() -> list[Any]:
    params = []
    for fname, sc in SCENARIOS:
        for fam in (4, 6):
            params.append(pytest.param(sc, fam, id=f"{fname.removesuffix('.yaml')}:{sc['id']}:v{fam}"))
    return params


def test_the_conformance_scenarios_are_present() -> None:
    if not CONFORMANCE_DIR.is_dir():
        pytest.skip(f"conformance scenarios not found at {CONFORMANCE_DIR}")
    assert SCENARIOS, f"no scenarios in {CONFORMANCE_DIR}"


@pytest.mark.skipif(not SCENARIOS, reason=f"conformance scenarios not found at {CONFORMANCE_DIR}")
@pytest.mark.parametrize(("scenario", "family"), _ids())
def test_every_conformance_scenario_passes_through_the_pure_compiler(
    scenario: dict[str, Any], family: int
) -> None:
    model = scenario.get("model") or _default_model()
    sim = Sim(model, family)
    failures: list[str] = []
    for si, step in enumerate(scenario["steps"]):
        if step.get("delete"):
            sim.delete(step["delete"])
        if step.get("apply"):
            sim.apply(step["apply"])
        if step.get("label"):
            sim.label(step["label"])
        cluster = sim.compile()
        assert not cluster.errors, [str(e) for e in cluster.errors]
        probe = step.get("probe")
        if probe:
            rows = [line.split() for line in probe["expect"].strip().splitlines()]
            assert len(rows) == 9 and all(len(r) == 9 for r in rows)
            for i, src in enumerate(ORDER):
                for j, dst in enumerate(ORDER):
                    if i == j:
                        continue
                    want = rows[i][j] == "."
                    got = sim.connected(src, dst, int(probe["port"]), probe["protocol"])
                    if got != want:
                        word = {True: "connected", False: "blocked"}
                        failures.append(
                            f"step {si} probe {probe['port']}/{probe['protocol']}: {src} -> {dst}: "
                            f"expected {word[want]}, got {word[got]}"
                        )
        for check in step.get("checks") or []:
            src, dst = check["from"], check["to"]
            if family == 6 and (src.startswith("ext/") or dst.startswith("ext/")):
                continue
            got = sim.connected(src, dst, int(check["port"]), check.get("protocol", "TCP"))
            if got != bool(check["connected"]):
                failures.append(
                    f"step {si} check {src} -> {dst} {check['port']}/{check.get('protocol', 'TCP')}: "
                    f"expected connected={check['connected']}, got {got}"
                )
    assert not failures, "\n".join(failures)
