"""Inputs of the debug CLI's pure parts without a cluster or a kernel: the conformance 9-pod
model as raw API objects (ClusterView input) and the maps a correct agent writes for a node,
as fake maps (dumped like the pinned ones, and answering LPM lookups as the kernel's tries do)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.agent import realization
from controller.agent.cluster_events import KindSnapshot, Snapshot
from controller.compiler.calico import CalicoObjects
from controller.compiler.clusterview import ClusterView, RawObjects
from controller.core.object_versions import kind_digest
from controller.datapath import abi, codecs
from controller.datapath.encoding import desired_maps
from controller.datapath.readback import KernelState, dump
from controller.debug.inputs import CALICO_FIELDS, Lists, agent_kind, listed_digests
from controller.debug.kernel import NodeMaps
from tests.conformance.runner import ORDER, default_model, model_manifests

NODES = ("node-1", "node-2")
LPM_MAPS = ("vg_ipcache4", "vg_ipcache6", "vg_policy")


def raw_cluster(
    policies: list[dict[str, Any]], rv: int = 10, cluster_policies: Sequence[dict[str, Any]] = ()
) -> RawObjects:
    """The conformance 9-pod model (namespaces x, y, z labelled ns=<name>, pods a, b, c labelled
    pod=<name>) as API objects, pods spread over two nodes, with these (Cluster)NetworkPolicies."""
    docs = model_manifests(default_model())
    namespaces, pods = [], []
    for d in docs:
        d = copy.deepcopy(d)
        d["metadata"]["resourceVersion"] = "1"
        if d["kind"] == "Namespace":
            d["metadata"]["labels"]["kubernetes.io/metadata.name"] = d["metadata"]["name"]
            namespaces.append(d)
        else:
            i = ORDER.index(f"{d['metadata']['namespace']}/{d['metadata']['name']}")
            node = NODES[i % 2]
            d["spec"]["nodeName"] = node
            ip4 = f"10.244.{1 + i % 2}.{10 + i}"
            d["status"] = {
                "phase": "Running",
                "podIPs": [{"ip": ip4}, {"ip": f"fd00:10:244:{1 + i % 2}::{10 + i}"}],
            }
            pods.append(d)
    nodes = [
        {
            "metadata": {"name": n, "labels": {"kubernetes.io/hostname": n, "kubernetes.io/os": "linux"}},
            "status": {"addresses": [{"type": "InternalIP", "address": f"10.244.{k}.1"}]},
        }
        for k, n in enumerate(NODES, 1)
    ]

    def stamped(objs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for p in objs:
            p = copy.deepcopy(p)
            p["metadata"].setdefault("resourceVersion", str(rv))
            out.append(p)
        return out

    return with_digests(
        RawObjects(namespaces, pods, stamped(policies), nodes, cluster_policies=stamped(cluster_policies))
    )


def raw_lists(raw: RawObjects) -> Lists:
    """The lists a debug command would have made to get `raw` (every kind listed)."""
    lists: Lists = {
        fld: (list(getattr(raw, fld)), "1")
        for fld in ("namespaces", "pods", "policies", "nodes", "services", "cluster_policies")
    }
    for fld, _, _ in CALICO_FIELDS:
        lists[fld] = (list(getattr(raw.calico, fld)), "1")
    return lists


def with_digests(raw: RawObjects) -> RawObjects:
    """`raw` with the digests of what it holds, as a debug command's lists compute them."""
    return dataclasses.replace(raw, digests=listed_digests(raw_lists(raw)))


def realizing(raw: RawObjects, ready: bool = True) -> dict[str, Any]:
    """The /status of a ready agent whose maps realize exactly the objects of `raw` (what it
    reports comes from the agent's own controller.agent.realization over such caches)."""
    kinds = {}
    for fld, (items, _) in raw_lists(raw).items():
        kind = agent_kind(fld)
        namespaced = realization.NAMESPACED[kind]
        kinds[kind] = KindSnapshot(
            tuple(items),  # type: ignore[arg-type]
            "1",
            0,
            True,
            digest=kind_digest(items, namespaced),
        )
    snap = Snapshot(kinds)
    return {
        "ready": ready,
        "errors": [],
        "realized": realization.realized_kinds(snap),
        "realized_objects": realization.realized_objects(snap),
    }


def restamped(objs: Sequence[dict[str, Any]], rv: str) -> list[dict[str, Any]]:
    """Copies of `objs` at resourceVersion `rv` (an agent that saw an older or newer version)."""
    out = []
    for obj in objs:
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = rv
        out.append(obj)
    return out


def flow_event(src: str, dst: str, direction: int, reason: int, rule_ref: int = 0, ep_id: int = 3) -> bytes:
    """A vg_events record of an IPv4 TCP flow src:40000 -> dst:80, as the datapath writes it."""
    e = abi.FlowEvent(
        ts_ns=5_000_000_000, ep_id=ep_id, dir=direction, reason=reason, family=4, proto=6, rule_ref=rule_ref
    )
    e.saddr[:] = list(codecs.addr16(src))
    e.daddr[:] = list(codecs.addr16(dst))
    e.sport = codecs.be16(40000)
    e.dport = codecs.be16(80)
    return bytes(e)


class FakeMap:
    """A map's items; lookups exact (hash maps) or longest-prefix (LPM tries: a key is a host
    __u32 prefix length then the data, matched on its leading bits as the kernel does)."""

    def __init__(self, items: dict[bytes, bytes], lpm: bool = False) -> None:
        self._items = items
        self.lpm = lpm

    def items(self) -> dict[bytes, bytes]:
        return self._items

    def lookup(self, key: bytes) -> bytes | None:
        if not self.lpm:
            return self._items.get(key)
        plen, data = int.from_bytes(key[:4], "little"), int.from_bytes(key[4:], "big")
        bits = 8 * (len(key) - 4)
        best: tuple[int, bytes] | None = None
        for k, v in self._items.items():
            kp = int.from_bytes(k[:4], "little")
            if kp > plen or (best is not None and kp <= best[0]):
                continue
            if (int.from_bytes(k[4:], "big") ^ data) >> (bits - kp) == 0:
                best = (kp, v)
        return best[1] if best else None

    def update(self, key: bytes, value: bytes) -> None:
        self._items[key] = value

    def close(self) -> None:
        pass


def fake_maps(view: ClusterView, node: str) -> tuple[dict[str, FakeMap], dict[str, int]]:
    """The maps a correct agent writes for `node` (ifindex 10, 11, ... by pod key)."""
    desired = view.desired(node)
    ifindex = {pod: 10 + i for i, pod in enumerate(sorted(desired.endpoints))}
    wanted = desired_maps(desired, ifindex)
    wanted["vg_ct"] = {}
    wanted["vg_config"] = {}
    return {k: FakeMap(v, lpm=k in LPM_MAPS) for k, v in wanted.items()}, ifindex


def node_maps(view: ClusterView, node: str) -> NodeMaps:
    """NodeMaps over the fake maps of `node`: the live lookups of `explain` without a kernel."""
    return NodeMaps(Path(f"/fake/{node}"), fake_maps(view, node)[0])


def kernel_state(
    view: ClusterView, node: str, ct: Sequence[codecs.CtEntry] = ()
) -> tuple[KernelState, dict[str, int]]:
    """What a correct agent writes for `node`, decoded back: the maps without a kernel."""
    fakes, ifindex = fake_maps(view, node)
    maps: dict[str, Any] = dict(fakes)  # FakeMap has what dump reads of a MapLike
    state = dump(maps)
    return KernelState(state.revision, state.endpoints, state.ipcache, state.policy, list(ct)), ifindex


# -- Calico host endpoints (the guide's NodePort scenario on the 9-pod model) --------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples" / "calico"
NODE_1_IP, NODE_PORT, LB_IP, OUTSIDE, OFFICE = (
    "10.244.1.1",
    30080,
    "10.246.0.5",
    "203.0.113.5",
    "198.51.100.7",
)
WEB_SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "x", "resourceVersion": "1"},
    "spec": {
        "type": "LoadBalancer",
        "clusterIP": "10.96.0.10",
        "selector": {"pod": "a"},
        "ports": [{"port": 80, "targetPort": 80, "nodePort": NODE_PORT, "protocol": "TCP"}],
    },
    "status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}},
}


def example_objects(*names: str) -> list[dict[str, Any]]:
    """The objects of docs/examples/calico files (by file name)."""
    import yaml

    return [d for n in names for d in yaml.safe_load_all((EXAMPLES / n).read_text()) if d]


def raw_host_endpoint_cluster(*calico_objects: dict[str, Any]) -> RawObjects:
    """The 9-pod model with a LoadBalancer Service (NodePort 30080, LB_IP), the nodes labelled
    ibm.role=worker_public, and these Calico objects (GlobalNetworkPolicy / HostEndpoint)."""
    from controller.compiler.calico import CalicoObjects

    raw = raw_cluster([])
    nodes = copy.deepcopy(list(raw.nodes))
    for n in nodes:
        n["metadata"]["labels"]["ibm.role"] = "worker_public"
    calico = CalicoObjects(
        global_policies=[o for o in calico_objects if o["kind"] == "GlobalNetworkPolicy"],
        host_endpoints=[o for o in calico_objects if o["kind"] == "HostEndpoint"],
    )
    return dataclasses.replace(raw, nodes=nodes, calico=calico, services=[WEB_SERVICE])


HEP_IFINDEX = 2  # the fake nodes' eth0


def hep_node_maps(view: ClusterView, node: str, hep_ifindex: int = HEP_IFINDEX) -> NodeMaps:
    """NodeMaps over the maps a correct agent writes for `node` with each of its host endpoints
    on interface `hep_ifindex` (eth0 of hep_links)."""
    from controller.datapath.encoding import Encoder

    desired = view.desired(node)
    ifindex = {pod: 10 + i for i, pod in enumerate(sorted(desired.endpoints))}
    placed = {name: [hep_ifindex] for name in desired.host_endpoints}
    wanted = Encoder().encode(desired, ifindex, placed).maps()
    wanted["vg_ct"] = {}
    wanted["vg_config"] = {}
    return NodeMaps(Path(f"/fake/{node}"), {k: FakeMap(v, lpm=k in LPM_MAPS) for k, v in wanted.items()})


def hep_links(view: ClusterView, node: str) -> dict[int, Any]:
    """The fake node's interfaces: lo and eth0 (HEP_IFINDEX) with the node's addresses."""
    from controller.debug.hostep import Link

    return {1: Link("lo", ("127.0.0.1",)), HEP_IFINDEX: Link("eth0", view.desired(node).host_addresses)}


def node_2_behind(raw: RawObjects) -> dict[str, dict[str, Any] | None]:
    """Agents' /status: node-1's realized `raw`; node-2's realized every policy of it at an
    older resourceVersion ("9"), so no policy counts as realized there."""
    calico = CalicoObjects(*(restamped(getattr(raw.calico, fld), "9") for fld, _, _ in CALICO_FIELDS))
    older = dataclasses.replace(
        raw,
        policies=restamped(raw.policies, "9"),
        cluster_policies=restamped(raw.cluster_policies, "9"),
        calico=calico,
    )
    return {"node-1": realizing(raw), "node-2": realizing(older)}
