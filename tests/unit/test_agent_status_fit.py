"""The agent's per-pass work outside the compiler: the policy status from the compiled
identity -> policies table gives what matching every selector on every local pod gives, is
recomputed only when its inputs change, and fit_capacity gives the results of a fit that
counts every prefix, without copying anything when everything fits."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from typing import Any, cast

import pytest

from controller.agent import policy_status as status_mod
from controller.agent.capacity import IPCACHE_MAPS, RESERVED_IDENTITIES, Fit, Overflow, fit_capacity
from controller.agent.cluster_events import Snapshot
from controller.agent.loop import Agent, AgentConfig
from controller.agent.veth_match import UNCLAIMED
from controller.bench import synth
from controller.compiler.builder import ClusterBuilder, cluster_from_objects
from controller.compiler.desired_state import EndpointDesired, NodeDesired, PolicyEntryKey, PolicyEntryValue
from controller.core.errors import PolicyError

# ------------------------------------------------------------------------------ policy status


class _Snap:
    def __init__(self, policies: list[dict[str, Any]], versions: tuple[int, ...]) -> None:
        self.policies = policies
        self.content_versions = versions


def snap_of(policies: list[dict[str, Any]], versions: tuple[int, ...]) -> Snapshot:
    """A snapshot's policies and content versions: all the policy status reads of it."""
    return cast(Snapshot, _Snap(policies, versions))


def _cluster() -> synth.Cluster:
    c = synth.control_plane_cluster(600, namespaces=12, policies=80, pods_per_node=100)
    extra = [
        synth.pod("ns-000", "hostnet", {"app": "app-0", "tier": "web"}, "10.250.0.1", "node-1", []),
        synth.pod("ns-000", "done", {"app": "app-0", "tier": "web"}, "10.250.0.2", "node-1", []),
        synth.pod("ns-000", "no-ip", {"app": "app-0", "tier": "web"}, "10.250.0.3", "node-1", []),
        synth.pod("ns-001", "other-node", {"app": "app-1"}, "10.250.0.4", "node-2", []),
    ]
    extra[0]["spec"]["hostNetwork"] = True
    extra[1]["status"]["phase"] = "Succeeded"
    del extra[2]["status"]["podIP"], extra[2]["status"]["podIPs"]
    c.pods = [*c.pods, *extra]
    for i, raw in enumerate(c.policies):
        raw["metadata"]["generation"] = i % 4 + 1
    c.policies = [
        *c.policies,
        synth.policy(
            "ns-000",
            "expressions",
            {
                "podSelector": {
                    "matchExpressions": [
                        {"key": "tier", "operator": "NotIn", "values": ["db"]},
                        {"key": "app", "operator": "Exists"},
                    ]
                }
            },
        ),
        synth.policy("empty-ns", "nobody", {"podSelector": {}}),
        synth.policy("ns-002", "none-match", {"podSelector": {"matchLabels": {"app": "nope"}}}),
    ]
    return c


def _agent(raw: synth.Cluster) -> tuple[Agent, Snapshot]:
    agent = Agent(AgentConfig(node="node-1", health_addr=None), sources=object(), discovery=object())  # type: ignore[arg-type]
    cluster = cluster_from_objects(raw.namespaces, raw.pods, raw.policies, raw.nodes)
    agent._cluster = cluster
    agent.errors.record_policy_errors(list(cluster.errors))
    return agent, snap_of(raw.policies, (1, 1, 1, 1))


def _compute_status(agent: Agent, snap: Snapshot, fit: Fit) -> dict[str, dict[str, Any]]:
    """The policy status of the agent's cluster and errors, computed (not the memo's)."""
    return agent.policy_status.compute(agent._cluster, snap, agent.errors.policy, fit.overflow)


def _fit(overflow: dict[str, Overflow] | None = None) -> Fit:
    return Fit(desired=None, pod_ifindex={}, overflow=overflow or {})


def test_the_policy_status_from_the_compiled_cluster_is_the_one_matching_every_selector_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent, snap = _agent(_cluster())
    local = sorted(p for p, pod in agent._cluster.pods.items() if pod.node == "node-1")
    overflow = {p: Overflow(p, "vg_policy", 10, 5) for p in local[::7]}
    fast = _compute_status(agent, snap, _fit(overflow))
    monkeypatch.setattr(status_mod, "_selected_by_policy", lambda cluster, local: None)
    slow = _compute_status(agent, snap, _fit(overflow))
    assert fast == slow
    assert sum(s["selected_pods"] for s in fast.values()) > 50  # the premise: policies select pods
    assert fast["ns-000/expressions"]["selected_pods"] >= 1
    assert fast["empty-ns/nobody"]["selected_pods"] == 0
    assert any(e["field"] == "map vg_policy" for s in fast.values() for e in s["errors"])
    assert {s["generation"] for s in fast.values()} >= {1, 2, 3, 4}


def test_a_cluster_that_is_not_a_cluster_state_gets_its_selectors_matched() -> None:
    agent, snap = _agent(_cluster())
    cluster = agent._cluster
    want = _compute_status(agent, snap, _fit())

    @dataclasses.dataclass
    class Other:  # what a test's own compute function may hand the agent
        pods: Any
        policies: Any

    agent._cluster = Other(cluster.pods, cluster.policies)
    assert status_mod._selected_by_policy(agent._cluster, []) is None
    assert _compute_status(agent, snap, _fit()) == want


def test_the_policy_status_is_recomputed_only_when_its_inputs_change() -> None:
    raw = _cluster()
    agent, snap = _agent(raw)
    first = agent._policy_status(snap, _fit())
    assert agent._policy_status(snap_of(raw.policies, (1, 1, 1, 1)), _fit()) is first
    local = [p for p in agent._cluster.pods.values() if p.node == "node-1" and p.active]
    selected = status_mod._selected_by_policy(agent._cluster, local)
    assert selected is not None
    pod = selected["ns-000/expressions"][0]
    overflowed = agent._policy_status(snap, _fit({pod: Overflow(pod, "vg_endpoints", 3, 2)}))
    assert overflowed is not first and overflowed != first
    assert agent._policy_status(snap, _fit()) == first
    newer = [dict(p, metadata={**p["metadata"], "generation": 9}) for p in raw.policies]
    regenerated = agent._policy_status(snap_of(newer, (1, 1, 2, 1)), _fit())
    assert {s["generation"] for s in regenerated.values()} == {9}
    bad = PolicyError("NetworkPolicy ns-001/pol-1", "spec.ingress[0]", "bad")
    agent.errors.record_policy_errors([bad])  # new errors, same snapshot
    erred = agent._policy_status(snap_of(newer, (1, 1, 2, 1)), _fit())
    assert erred["ns-001/pol-1"]["errors"] == [{"field": "spec.ingress[0]", "message": "bad"}]
    assert {k: v for k, v in erred.items() if k != "ns-001/pol-1"} == {
        k: v for k, v in regenerated.items() if k != "ns-001/pol-1"
    }


# ------------------------------------------------------------------------------ fit_capacity


def _reference_fit(desired: Any, pod_ifindex: Any, capacity: Any, prefer: frozenset[str]) -> Fit:
    """fit_capacity as it was before it skipped counting: every prefix counted per family."""
    overflow: dict[str, Overflow] = {}
    endpoints = dict(desired.endpoints)
    ipcache = dict(desired.ipcache)
    pods = dict(pod_ifindex)
    cap_eps = capacity.get("vg_endpoints")
    if cap_eps is not None and len(pods) > cap_eps:
        order = sorted(pods, key=lambda p: (p not in prefer, p.startswith(UNCLAIMED), p))
        for pod in order[cap_eps:]:
            overflow[pod] = Overflow(pod, "vg_endpoints", len(pod_ifindex), cap_eps)
            pods.pop(pod)
            endpoints.pop(pod, None)
    for version, name in IPCACHE_MAPS.items():
        cap = capacity.get(name)
        nets = [n for n in ipcache if n.version == version]
        if cap is None or len(nets) <= cap:
            continue
        for pod in pods:
            overflow.setdefault(pod, Overflow(pod, name, len(nets), cap))
        endpoints = {}
        nets.sort(key=lambda n: (ipcache[n][0] not in RESERVED_IDENTITIES, -n.prefixlen, str(n)))
        for net in nets[cap:]:
            del ipcache[net]
    cap_pol = capacity.get("vg_policy")
    if cap_pol is not None:
        with_veth = [p for p in endpoints if p in pods]
        needed = sum(len(endpoints[p].entries) for p in with_veth)
        if needed > cap_pol:
            used = 0
            for pod in sorted(with_veth, key=lambda p: (p not in prefer, p)):
                n = len(endpoints[pod].entries)
                if used + n <= cap_pol:
                    used += n
                    continue
                overflow[pod] = Overflow(pod, "vg_policy", needed, cap_pol)
                del endpoints[pod]
    if not overflow:
        return Fit(desired, dict(pod_ifindex), {})
    return Fit(dataclasses.replace(desired, endpoints=endpoints, ipcache=ipcache), pods, overflow)


def _random_node(rng: random.Random) -> tuple[NodeDesired, dict[str, int]]:
    value = PolicyEntryValue(1, 1)
    endpoints = {}
    pod_ifindex = {}
    for i in range(rng.randrange(1, 8)):
        pod = f"x/p{i}"
        keys = [PolicyEntryKey(0, 256 + k, 6, 80, 16) for k in range(rng.randrange(4))]
        endpoints[pod] = EndpointDesired(
            pod, 256 + i, True, False, f"10.244.1.{i + 2}", None, dict.fromkeys(keys, value)
        )
        if rng.random() < 0.85:
            pod_ifindex[pod] = 10 + i
    ipcache: dict[Any, tuple[int, int, int]] = {}
    for i in range(rng.randrange(1, 12)):
        ipcache[ipaddress.ip_network(f"10.{i}.0.0/{rng.choice((8, 16, 32))}", strict=False)] = (
            rng.choice((1, 2, 3, 300)),
            0,
            0,
        )
    for i in range(rng.randrange(0, 12)):
        ipcache[ipaddress.ip_network(f"fd00:{i:x}::/{rng.choice((48, 64, 128))}", strict=False)] = (
            rng.choice((1, 2, 300)),
            0,
            0,
        )
    return NodeDesired(endpoints=endpoints, ipcache=ipcache, rules={}, identities={}), pod_ifindex


def test_fit_capacity_gives_the_results_of_counting_every_prefix_and_shares_the_state_when_it_fits() -> None:
    rng = random.Random(5)
    fitted = overflowed = 0
    for _ in range(3000):
        desired, pod_ifindex = _random_node(rng)
        capacity = {
            name: rng.randrange(1, 16)
            for name in ("vg_endpoints", "vg_ipcache4", "vg_ipcache6", "vg_policy")
            if rng.random() < 0.8
        }
        prefer = frozenset(p for p in pod_ifindex if rng.random() < 0.3)
        got = fit_capacity(desired, pod_ifindex, capacity, prefer)
        want = _reference_fit(desired, pod_ifindex, capacity, prefer)
        assert (got.overflow, got.pod_ifindex) == (want.overflow, want.pod_ifindex)
        assert got.desired.endpoints == want.desired.endpoints and got.desired.ipcache == want.desired.ipcache
        if got.overflow:
            overflowed += 1
        else:
            fitted += 1
            assert got.desired is desired
    assert fitted > 300 and overflowed > 300  # both outcomes were exercised


@dataclasses.dataclass(frozen=True)
class DuckPrefix:
    """A prefix that is not an ipaddress network (fit_capacity then counts by .version)."""

    version: int
    prefixlen: int
    name: str

    def __str__(self) -> str:
        return self.name


def test_fit_capacity_counts_prefixes_that_are_not_ipaddress_networks_by_their_version() -> None:
    rng = random.Random(6)
    for _ in range(300):
        desired, pod_ifindex = _random_node(rng)
        ipcache: dict[Any, tuple[int, int, int]] = {
            DuckPrefix(rng.choice((4, 6)), 32, f"p{i}"): (300, 0, 0) for i in range(rng.randrange(1, 10))
        }
        desired = dataclasses.replace(desired, ipcache=ipcache)
        capacity = {"vg_ipcache4": rng.randrange(1, 6), "vg_ipcache6": rng.randrange(1, 6)}
        got = fit_capacity(desired, pod_ifindex, capacity)
        want = _reference_fit(desired, pod_ifindex, capacity, frozenset())
        assert (got.overflow, got.pod_ifindex) == (want.overflow, want.pod_ifindex)
        assert got.desired.ipcache == want.desired.ipcache


def test_the_local_pods_are_the_active_ones_on_the_node_whatever_objects_the_cluster_holds() -> None:
    @dataclasses.dataclass
    class P:
        node: Any
        active: bool = True

    class NoNode:
        active = True

    class NoActive:
        node = "node-1"

    objects: list[Any] = [P("node-1"), P(None), P("node-2"), P("node-1", active=False), NoActive(), P(1)]
    for pods in (objects, [o for o in objects if not isinstance(o, NoActive)], [*objects, NoNode()]):
        by_key = {str(i): p for i, p in enumerate(pods)}
        want = [
            p for p in by_key.values() if getattr(p, "node", None) == "node-1" and getattr(p, "active", True)
        ]
        got = status_mod._local_pods(by_key, "node-1")
        assert len(got) == len(want) and all(a is b for a, b in zip(got.values(), want, strict=True))
        assert all(by_key[k] is p for k, p in got.items())


def test_the_policy_status_redone_for_what_changed_is_the_one_computed_afresh_over_random_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scans = [0]  # every pod scanned for the local ones: the fresh status's, once per step
    scan = status_mod._local_pods

    def counted(pods: Any, node: str) -> dict[str, Any]:
        scans[0] += 1
        return scan(pods, node)

    monkeypatch.setattr(status_mod, "_local_pods", counted)
    rng = random.Random(12)
    raw = _cluster()
    agent, _ = _agent(raw)
    versions = iter(range(1, 1 << 30))
    for obj in [*raw.namespaces, *raw.pods, *raw.policies, *raw.nodes]:  # as the API server does
        obj["metadata"]["resourceVersion"] = str(next(versions))
    builder = ClusterBuilder()  # the agent's: unchanged kinds keep their maps (same objects)
    policies, pods = list(raw.policies), list(raw.pods)
    overflow: dict[str, Overflow] = {}
    errors: list[PolicyError] = []
    unseen = 0
    for step in range(60):
        kind = rng.choice(
            [
                "relabel",
                "pod_add",
                "pod_add_elsewhere",
                "reschedule",
                "unseen_build",
                "pod_del",
                "pol_add",
                "pol_del",
                "generation",
                "same",
                "errors",
                "overflow",
            ]
        )
        if kind == "relabel":
            at = rng.randrange(len(pods))
            meta = {k: v for k, v in pods[at]["metadata"].items() if k != "resourceVersion"}
            pods[at] = dict(pods[at], metadata={**meta, "labels": {"app": f"app-{rng.randrange(5)}"}})
        elif kind == "pod_add":
            pods.append(
                synth.pod(
                    "ns-000", f"new-{step}", {"app": "app-0", "tier": "web"}, f"10.251.0.{step}", "node-1", []
                )
            )
        elif kind == "pod_add_elsewhere":
            pods.append(
                synth.pod("ns-001", f"away-{step}", {"app": "app-1"}, f"10.252.0.{step}", "node-2", [])
            )
        elif kind == "reschedule":  # the same pod (key) replaced by one on another node
            at = rng.randrange(len(pods))
            meta = {k: v for k, v in pods[at]["metadata"].items() if k != "resourceVersion"}
            node = "node-2" if pods[at]["spec"]["nodeName"] == "node-1" else "node-1"
            pods[at] = dict(pods[at], metadata=meta, spec={**pods[at]["spec"], "nodeName": node})
        elif kind == "unseen_build":  # a pod added in a build whose status was never asked
            pods.append(
                synth.pod("ns-000", f"unseen-{step}", {"app": "app-0"}, f"10.253.0.{step}", "node-1", [])
            )
            pods[-1]["metadata"]["resourceVersion"] = str(next(versions))
            builder.build(raw.namespaces, list(pods), list(policies), raw.nodes)
            unseen += 1
        elif kind == "pod_del":
            del pods[rng.randrange(len(pods))]
        elif kind == "pol_add":
            policies.append(synth.policy(f"ns-00{rng.randrange(3)}", f"added-{step}", {"podSelector": {}}))
        elif kind == "pol_del" and policies:
            del policies[rng.randrange(len(policies))]
        elif kind in ("generation", "same") and policies:
            at = rng.randrange(len(policies))
            meta = {k: v for k, v in policies[at]["metadata"].items() if k != "resourceVersion"}
            meta["generation"] = meta.get("generation", 0) + (kind == "generation")
            policies[at] = dict(policies[at], metadata=meta)
        elif kind == "errors":
            keys = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in policies]
            errors = [
                PolicyError(f"NetworkPolicy {k}", "spec", f"e{step}")
                for k in rng.sample(keys, min(3, len(keys)))
            ]
        else:
            local = sorted(
                p["metadata"]["namespace"] + "/" + p["metadata"]["name"]
                for p in pods
                if p["spec"]["nodeName"] == "node-1"
            )
            overflow = {
                p: Overflow(p, "vg_policy", 9, 3)
                for p in rng.sample(local, min(len(local), rng.randrange(3)))
            }
        for obj in (*pods, *policies):
            obj["metadata"].setdefault("resourceVersion", str(next(versions)))
        cluster = builder.build(raw.namespaces, list(pods), list(policies), raw.nodes)  # a snapshot's lists
        snap = snap_of(list(policies), (step,))
        agent._cluster = cluster
        agent.errors.record_policy_errors([*cluster.errors, *errors])
        got = _compute_status(agent, snap, _fit(overflow))
        fresh, _ = _agent(raw)
        fresh._cluster = cluster_from_objects(raw.namespaces, pods, policies, raw.nodes)
        fresh.errors.record_policy_errors([*cluster.errors, *errors])
        want = _compute_status(fresh, snap, _fit(overflow))
        assert got == want and list(got) == list(want), f"step {step} ({kind})"
    # the status kept up with every build takes the local pods from its last ones (a scan the
    # first time and after a build it did not see)
    assert unseen and scans[0] == 60 + 1 + unseen
