"""The incremental compiler (a ClusterBuilder build compiled from the previous build's
compilation) computes exactly what a full compilation of the same objects computes.

Random event sequences over a small cluster: pods added, removed, relabelled, moved to another
address or node, terminated; policies added, changed and deleted (pod and namespace selectors,
ipBlocks with excepts around pod addresses, named ports both ways, audit mode); namespaces
relabelled and nodes changed (those take the full path). Small pools of labels, addresses and
identity keys make collisions, shared addresses and empty identities common.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.compiler import compute
from controller.compiler.builder import ClusterBuilder, cluster_from_objects
from controller.compiler.model import ClusterState
from controller.compiler.policy import compile_cluster
from tests.support.k8s import K8s as K

NAMESPACES = ("a", "b", "c")
NODES = ("node-1", "node-2")
APPS = ("web", "api", "db")
TIERS = ("front", "back")
PortList = list[tuple[str | None, int, str]]
PORTS: tuple[PortList, ...] = (
    [("http", 80, "TCP")],
    [("http", 8080, "TCP")],
    [("db", 5432, "TCP"), ("http", 80, "TCP")],
    [],
)


class World:
    """Raw objects as informers hold them: an unchanged object is the same dict next time."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.rv = 0
        self.namespaces: dict[str, dict[str, Any]] = {n: self._stamp(K.ns(n, team=n)) for n in NAMESPACES}
        self.nodes: dict[str, dict[str, Any]] = {
            "node-1": self._stamp(K.node("node-1", "192.168.0.1", labels={"role": "a"})),
            "node-2": self._stamp(K.node("node-2", "192.168.0.2", labels={"role": "b"})),
        }
        self.pods: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.cnps: dict[str, dict[str, Any]] = {}
        for i in range(8):
            self.add_pod(f"p{i}")
        for i in range(3):
            self.add_policy(f"n{i}")
        if rnd.random() < 0.7:
            self.add_cnp("c0")

    def _stamp(self, raw: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        meta = raw["metadata"]
        meta["resourceVersion"] = str(self.rv)
        meta["uid"] = f"{meta.get('namespace', '')}/{meta['name']}"
        return raw

    def ip(self) -> str:
        return f"10.0.{self.rnd.randrange(2)}.{self.rnd.randrange(1, 12)}"

    def add_pod(self, name: str) -> None:
        r = self.rnd
        key = f"{r.choice(NAMESPACES)}/{name}"
        labels = {"app": r.choice(APPS)}
        if r.random() < 0.5:
            labels["tier"] = r.choice(TIERS)
        ips = [self.ip()] if r.random() < 0.9 else []
        if ips and r.random() < 0.3:
            ips.append(f"fd00::{r.randrange(1, 12):x}")
        phase = "Succeeded" if r.random() < 0.1 else "Running"
        pod = K.pod(
            key, labels, ips, r.choice(NODES), r.choice(PORTS), host_network=r.random() < 0.05, phase=phase
        )
        self.pods[key] = self._stamp(pod)

    def change_pod(self) -> None:
        r = self.rnd
        key = r.choice(sorted(self.pods))
        old = self.pods[key]
        meta = old["metadata"]
        labels = dict(meta["labels"])
        what = r.randrange(4)
        if what == 0:
            labels["app"] = r.choice(APPS)
        elif what == 1:
            labels.pop("tier", None) if "tier" in labels else labels.update(tier=r.choice(TIERS))
        ips = [i["ip"] for i in old["status"].get("podIPs", [])]
        if what == 2:
            ips = [self.ip()]
        node = old["spec"].get("nodeName")
        if what == 3:
            node = r.choice(NODES)
        ports = [
            (c.get("name"), c["containerPort"], c["protocol"]) for c in old["spec"]["containers"][0]["ports"]
        ]
        if r.random() < 0.2:
            ports = r.choice(PORTS)
        phase = "Failed" if r.random() < 0.05 else old["status"]["phase"]
        self.pods[key] = self._stamp(
            K.pod(key, labels, ips, node, ports, old["spec"].get("hostNetwork", False), phase)
        )

    def policy_spec(self) -> dict[str, Any]:
        r = self.rnd
        selector: dict[str, Any] = {} if r.random() < 0.3 else {"matchLabels": {"app": r.choice(APPS)}}
        peers: list[dict[str, Any]] = []
        for _ in range(r.randrange(3)):
            kind = r.randrange(4)
            if kind == 0:
                peers.append({"podSelector": {"matchLabels": {"tier": r.choice(TIERS)}}})
            elif kind == 1:
                peers.append(
                    {
                        "namespaceSelector": {"matchLabels": {"team": r.choice(NAMESPACES)}},
                        "podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]},
                    }
                )
            elif kind == 2:
                peers.append({"namespaceSelector": {}})
            else:
                block: dict[str, Any] = {"cidr": f"10.0.{r.randrange(2)}.0/24"}
                if r.random() < 0.5:
                    block["except"] = [f"10.0.{block['cidr'].split('.')[2]}.{r.randrange(1, 12)}/32"]
                peers.append({"ipBlock": block})
        ports: list[dict[str, Any]] = []
        if r.random() < 0.6:
            ports.append({"port": r.choice(["http", "db", 80, 443])})
        if r.random() < 0.1:
            ports.append({"port": 80, "endPort": 10})  # invalid: the rule is dropped, an error kept
        rule: dict[str, Any] = {"ports": ports} if ports else {}
        direction = r.choice(["ingress", "egress", "both"])
        spec: dict[str, Any] = {"podSelector": selector}
        if direction in ("ingress", "both"):
            spec["ingress"] = [{**rule, "from": peers}] if peers else [rule]
        if direction in ("egress", "both"):
            spec["egress"] = [{**rule, "to": peers}] if peers else [rule]
        spec["policyTypes"] = {"ingress": ["Ingress"], "egress": ["Egress"], "both": ["Ingress", "Egress"]}[
            direction
        ]
        return spec

    def add_policy(self, name: str) -> None:
        key = f"{self.rnd.choice(NAMESPACES)}/{name}"
        pol = K.policy(key, self.policy_spec())
        if self.rnd.random() < 0.2:
            pol["metadata"]["annotations"] = {"vethguard.dev/audit": "true"}
        self.policies[key] = self._stamp(pol)

    def cnp_rule(self, egress: bool) -> dict[str, Any]:
        r = self.rnd
        kinds = ["namespaces", "pods", "networks", "nodes"] if egress else ["namespaces", "pods"]
        peers: list[dict[str, Any]] = []
        for _ in range(r.randrange(1, 3)):
            kind = r.choice(kinds)
            if kind == "namespaces":
                peers.append({"namespaces": {"matchLabels": {"team": r.choice(NAMESPACES)}}})
            elif kind == "pods":
                pods = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": r.choice(APPS)}}}
                peers.append({"pods": pods})
            elif kind == "networks":
                peers.append({"networks": [r.choice(["10.0.0.0/24", "10.0.1.8/29", "192.168.0.0/16"])]})
            else:
                peers.append({"nodes": {"matchLabels": {"role": r.choice("ab")}}})
        rule: dict[str, Any] = {
            "action": r.choice(["Accept", "Deny", "Pass"]),
            ("to" if egress else "from"): peers,
        }
        if r.random() < 0.5:
            named = r.random() < 0.3 and all(next(iter(p)) in ("namespaces", "pods") for p in peers)
            port: dict[str, Any] = (
                {"destinationNamedPort": r.choice(["http", "db"])}
                if named
                else {
                    "tcp": {
                        "destinationPort": r.choice([{"number": 80}, {"range": {"start": 80, "end": 5432}}])
                    }
                }
            )
            rule["protocols"] = [port]
        return rule

    def add_cnp(self, name: str) -> None:
        r = self.rnd
        subject: dict[str, Any] = (
            {"namespaces": {"matchLabels": {"team": r.choice(NAMESPACES)}}}
            if r.random() < 0.5
            else {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": r.choice(APPS)}}}}
        )
        spec: dict[str, Any] = {
            "tier": r.choice(["Admin", "Baseline"]),
            "priority": r.randrange(3),
            "subject": subject,
        }
        if r.random() < 0.7:
            spec["ingress"] = [self.cnp_rule(False) for _ in range(r.randrange(1, 3))]
        if r.random() < 0.7:
            spec["egress"] = [self.cnp_rule(True) for _ in range(r.randrange(1, 3))]
        raw = {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.cnps[name] = self._stamp(raw)

    def step(self, n: int) -> str:
        r = self.rnd
        choice = r.choices(
            [
                "pod+",
                "pod-",
                "pod~",
                "pods~",
                "pol+",
                "pol-",
                "pol~",
                "ns~",
                "node~",
                "pod+pol",
                "cnp+",
                "cnp-",
            ],
            weights=[4, 3, 6, 2, 3, 2, 2, 1, 1, 1, 1, 1],
        )[0]
        if choice == "pod+":
            self.add_pod(f"q{n}")
        elif choice == "pod-" and self.pods:
            del self.pods[r.choice(sorted(self.pods))]
        elif choice == "pod~" and self.pods:
            self.change_pod()
        elif choice == "pods~" and self.pods:
            for _ in range(3):
                self.change_pod()
        elif choice == "pol+":
            self.add_policy(f"m{n}")
        elif choice == "pol-" and self.policies:
            del self.policies[r.choice(sorted(self.policies))]
        elif choice == "pol~" and self.policies:
            key = r.choice(sorted(self.policies))
            self.policies[key] = self._stamp(K.policy(key, self.policy_spec()))
        elif choice == "ns~":
            name = r.choice(NAMESPACES)
            self.namespaces[name] = self._stamp(K.ns(name, team=r.choice(NAMESPACES)))
        elif choice == "node~":
            # (sometimes an address a pod may also have: the pod's entry wins while it exists)
            self.nodes["node-2"] = self._stamp(K.node("node-2", r.choice(["192.168.0.2", "10.0.1.11"])))
        elif choice == "pod+pol":
            self.add_pod(f"q{n}")
            self.add_policy(f"m{n}")
        elif choice == "cnp+":
            self.add_cnp(r.choice(["c0", "c1", f"c{n}"]))  # (a new one, or a changed one)
        elif choice == "cnp-" and self.cnps:
            del self.cnps[r.choice(sorted(self.cnps))]
        return choice

    def objects(self) -> tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]:
        pods = list(self.pods.values())
        if self.rnd.random() < 0.15:  # a source that orders its objects otherwise, now and then
            pods = pods[::-1] if self.rnd.random() < 0.5 else pods[3:] + pods[:3]
        return (
            list(self.namespaces.values()),
            pods,
            list(self.policies.values()),
            list(self.nodes.values()),
            list(self.cnps.values()),
        )


def summary(state: ClusterState) -> dict[str, Any]:
    """Everything the compiler hands out, for comparison."""
    c = compile_cluster(state)
    return {
        "nodes": {n: compute.compute(state, n) for n in NODES},
        "pod_identity": dict(c.pod_identity),
        "selected": {k: v for k, v in c.selected.items()},
        "policies_for_identity": {i: [p.key for p in ps] for i, ps in c.policies_for_identity.items() if ps},
        "pods_by_identity": {i: [p.key for p in ps] for i, ps in c.pods_by_identity.items()},
        "identity_labels": {i: dict(v) for i, v in c.identity_labels.items()},
        "identities": dict(c.identities),
        "ns_index": {
            ns: (set(i.all), {k: set(v) for k, v in i.by_kv.items()}) for ns, i in c.ns_index.items()
        },
        "index": (set(c.index.all), {k: set(v) for k, v in c.index.by_kv.items()}, c.index.by_key),
        "rules": dict(c.rules),
        "tier_rules": dict(c.tiers.rules),
        "cidr_identity": dict(c.cidr_identity),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_every_incremental_compilation_equals_a_full_compilation_of_the_same_objects(seed: int) -> None:
    world = World(random.Random(seed))
    builder = ClusterBuilder()
    state = None
    incremental = 0
    for n in range(25):
        event = world.step(n)
        objects = world.objects()
        previous = state  # like the agent, hold the previous cluster while the next is compiled
        state = builder.build(*objects)
        got = summary(state)
        incremental += compile_cluster(state).incremental
        fresh = cluster_from_objects(*objects)
        assert state == fresh and state.errors == fresh.errors, f"step {n} ({event}): the models differ"
        want = summary(fresh)
        assert got == want, f"step {n} ({event}) differs (seed {seed})"
        del previous
    assert incremental > 0


def test_pod_and_policy_events_are_compiled_incrementally_and_namespace_events_in_full() -> None:
    world = World(random.Random(7))
    builder = ClusterBuilder()
    state = builder.build(*world.objects())
    compile_cluster(state)
    kinds: dict[str, list[bool]] = {}
    for n in range(200):
        event = world.step(n)
        previous = state  # held while the next one is compiled, as the agent does
        state = builder.build(*world.objects())
        kinds.setdefault(event, []).append(compile_cluster(state).incremental)
        del previous
    assert not any(kinds["ns~"]) and not any(kinds["node~"])
    for event in ("pod+", "pod~", "pol+", "pol-", "pol~"):
        # a few fall back (an address shared by two pods, an identity collision); most do not
        assert sum(kinds[event]) > len(kinds[event]) // 2, (event, kinds[event])


def test_a_cluster_built_from_objects_is_never_compiled_from_another() -> None:
    world = World(random.Random(3))
    builder = ClusterBuilder()
    compile_cluster(builder.build(*world.objects()))
    world.step(1)
    fresh = cluster_from_objects(*world.objects())
    assert fresh.delta is None
    assert not compile_cluster(fresh).incremental


def test_a_build_whose_previous_compilation_is_gone_is_compiled_in_full() -> None:
    world = World(random.Random(4))
    builder = ClusterBuilder()
    compile_cluster(builder.build(*world.objects()))  # the cluster and its compilation are dropped
    world.add_pod("x1")
    assert not compile_cluster(builder.build(*world.objects())).incremental


def test_a_build_whose_previous_build_was_not_compiled_is_compiled_in_full() -> None:
    world = World(random.Random(5))
    builder = ClusterBuilder()
    first = builder.build(*world.objects())
    compile_cluster(first)
    world.add_pod("x1")
    builder.build(*world.objects())  # never compiled (say the agent's compute failed)
    world.add_pod("x2")
    assert not compile_cluster(builder.build(*world.objects())).incremental


def test_a_build_names_exactly_the_pods_and_policies_that_changed_and_parses_only_them() -> None:
    world = World(random.Random(11))
    builder = ClusterBuilder()
    first = builder.build(*world.objects())
    assert first.delta is None
    world.change_pod()  # one pod replaced by a new object
    world.add_pod("new")
    world.add_policy("newpol")
    second = builder.build(*world.objects())
    assert second.delta is not None and second.delta.base == first.build_id
    replaced = {k for k, p in second.pods.items() if first.pods.get(k) is not p}
    assert second.delta.pods == replaced and len(replaced) == 2
    assert second.delta.policies == {k for k in second.policies if k not in first.policies}
    assert not second.delta.namespaces and not second.delta.nodes
    assert builder.parsed == 3
    third = builder.build(*world.objects())
    assert third.delta is not None and not third.delta.pods and not third.delta.policies
    assert third.pods is second.pods and builder.parsed == 0


def test_two_builders_in_one_process_each_compile_from_their_own_previous_build() -> None:
    worlds = [World(random.Random(21)), World(random.Random(22))]
    builders = [ClusterBuilder(), ClusterBuilder()]
    states = [b.build(*w.objects()) for b, w in zip(builders, worlds, strict=True)]
    for s in states:
        compile_cluster(s)
    for n in range(6):
        for i in (0, 1):  # interleaved, as two agents in one process would
            worlds[i].add_pod(f"i{n}")
            previous = states[i]
            states[i] = builders[i].build(*worlds[i].objects())
            compiled = compile_cluster(states[i])
            assert compiled.incremental
            assert summary(states[i]) == summary(cluster_from_objects(*worlds[i].objects()))
            del previous


def test_a_failing_incremental_step_falls_back_to_a_full_compilation(monkeypatch: Any) -> None:
    from controller.compiler.stages.selection import Selection

    world = World(random.Random(31))
    builder = ClusterBuilder()
    first = builder.build(*world.objects())
    compile_cluster(first)

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("a bug in an incremental step")

    monkeypatch.setattr(Selection, "update", broken)
    world.add_pod("late")
    world.add_policy("late")
    second = builder.build(*world.objects())
    compiled = compile_cluster(second)
    assert not compiled.incremental
    assert summary(second) == summary(cluster_from_objects(*world.objects()))


def _namespace_event(world: World, name: str) -> None:
    world.namespaces[name] = world._stamp(K.ns(name, team=f"{name}-moved"))


def test_two_builders_keep_their_own_generation_caches() -> None:
    """A full compilation (a namespace event) over the very Pod objects of its builder's last
    full build shares that build's identity tables, whatever another builder compiled in between
    (with process-wide caches, the other builder's compilation replaced them)."""
    worlds = [World(random.Random(41)), World(random.Random(42))]
    builders = [ClusterBuilder(), ClusterBuilder()]
    assert builders[0].generations is not builders[1].generations
    states = [b.build(*w.objects()) for b, w in zip(builders, worlds, strict=True)]
    firsts = [compile_cluster(s) for s in states]
    for s, b in zip(states, builders, strict=True):
        assert s.generations is b.generations
    for n in range(4):
        for i in (0, 1):  # interleaved: the other builder compiled since this one's last build
            _namespace_event(worlds[i], NAMESPACES[n % len(NAMESPACES)])
            previous = states[i]
            states[i] = builders[i].build(*worlds[i].objects())
            compiled = compile_cluster(states[i])
            assert not compiled.incremental  # (a namespace event)
            assert compiled.identity_tables is firsts[i].identity_tables
            assert summary(states[i]) == summary(cluster_from_objects(*worlds[i].objects()))
            del previous
    # each cache holds its own builder's generations: pods of its own world only
    from controller.compiler.stages.identities import IdentityGeneration

    for i in (0, 1):
        last = builders[i].generations.last(IdentityGeneration)
        assert last is not None and last.tables is firsts[i].identity_tables
        assert set(last.active) == {k for k, p in states[i].pods.items() if p.active}


def test_clusters_without_a_builder_share_no_generations() -> None:
    world = World(random.Random(43))
    a = cluster_from_objects(*world.objects())
    b = cluster_from_objects(*world.objects())
    assert a.generations is None and b.generations is None
    ca, cb = compile_cluster(a), compile_cluster(b)
    assert ca.generations is not cb.generations
    assert ca.identity_tables is not cb.identity_tables
    assert summary(a) == summary(b)


def test_two_builders_compiling_in_two_threads_each_match_a_full_compilation() -> None:
    """Two compile pipelines at once, events interleaved by the scheduler: each compilation equals
    a fresh full compilation of its own objects."""
    import threading

    failures: list[str] = []
    barrier = threading.Barrier(2)

    def run(seed: int) -> None:
        world = World(random.Random(seed))
        builder = ClusterBuilder()
        state = builder.build(*world.objects())
        compile_cluster(state)
        barrier.wait()
        for n in range(40):
            event = world.step(n)
            previous = state
            state = builder.build(*world.objects())
            got = summary(state)
            want = summary(cluster_from_objects(*world.objects()))
            if got != want:
                failures.append(f"seed {seed} step {n} ({event})")
            del previous

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (51, 52)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
