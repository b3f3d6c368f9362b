"""Fakes for driving the real agent loop (real model and compiler) in unit tests: an API server
whose lists return whatever the test put there, route discovery from a table, a datapath that
records syncs and refuses more entries than its capacity, and a link watch without netlink."""

from __future__ import annotations

import json
import queue
from collections.abc import Mapping, Sequence
from typing import Any

from controller.agent.informers import Informer, Sources
from controller.agent.kube_api import KINDS
from controller.agent.loop import Agent, AgentConfig
from controller.agent.metrics import Metrics
from controller.agent.veth_match import Discovered
from controller.compiler.desired_state import NodeDesired
from controller.datapath.readback import GcResult, KernelState


class ListResponse:
    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body).encode()

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class StaticApi:
    """list_fn per kind returning whatever objects the test put there (garbage included)."""

    def __init__(self) -> None:
        self.items: dict[str, list[Any]] = {spec.kind: [] for spec in KINDS}
        self.rv = 1

    def list_fn(self, kind: str) -> Any:
        def fn(**_kwargs: Any) -> ListResponse:
            return ListResponse({"metadata": {"resourceVersion": str(self.rv)}, "items": self.items[kind]})

        return fn

    def sources(self) -> Sources:
        q: queue.Queue[Any] = queue.Queue()
        return Sources({spec.kind: Informer(spec, self.list_fn(spec.kind), q) for spec in KINDS}, q)


def relist(src: Sources) -> None:
    for inf in src.informers.values():
        inf._relist()


class Routes:
    def __init__(self, by_ip: dict[str, int] | None = None) -> None:
        self.by_ip = by_ip or {}

    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered:
        out = Discovered()
        for p, ips in sorted(pod_ips.items()):
            idx = next((self.by_ip[i] for i in ips if isinstance(i, str) and i in self.by_ip), None)
            if idx is None:
                out.missing.append(p)
            else:
                out.pod_ifindex[p] = idx
        return out


class NullDatapath:
    """A NodeDatapath that does nothing: fakes subclass it and override what they record."""

    def attach(self, ifindex: int) -> None:
        pass

    def detach(self, ifindex: int) -> None:
        pass

    def sync(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> object:
        return None

    def sync_incremental(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> object:
        return self.sync(desired, pod_ifindex)

    def prepare_spares(self) -> int:
        return 0

    def find_uplinks(self, names: Sequence[str]) -> dict[int, str]:
        return {}

    def attach_uplink(self, ifindex: int) -> None:
        pass

    def detach_uplink(self, ifindex: int) -> None:
        pass

    def capacity(self) -> dict[str, int]:
        return {}

    def entry_counts(self) -> dict[str, int]:
        return {}

    def counters(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        return {}

    def gc_conntrack(self) -> GcResult:
        return GcResult(0, 0, 0)

    def sweep_links(self) -> int:
        return 0

    def dump(self) -> KernelState:
        return KernelState(0, {}, {}, {}, [])

    def close(self) -> None:
        pass


class FakeDatapath(NullDatapath):
    def __init__(self, capacity: dict[str, int] | None = None) -> None:
        self.cap = capacity or {}
        self.attached: set[int] = set()
        self.synced: list[tuple[NodeDesired, dict[str, int]]] = []
        self.counter_values: dict[tuple[int, int, int], tuple[int, int]] = {}

    def attach(self, ifindex: int) -> None:
        self.attached.add(ifindex)

    def detach(self, ifindex: int) -> None:
        self.attached.discard(ifindex)

    def sync(self, desired: NodeDesired, pod_ifindex: Mapping[str, int]) -> None:
        # like the real maps: more entries than max_entries cannot be written
        entries = sum(len(desired.endpoints[p].entries) for p in pod_ifindex if p in desired.endpoints)
        if entries > self.cap.get("vg_policy", 1 << 30) or len(pod_ifindex) > self.cap.get(
            "vg_endpoints", 1 << 30
        ):
            raise AssertionError("the agent handed the datapath more entries than fit")
        self.synced.append((desired, dict(pod_ifindex)))

    def capacity(self) -> dict[str, int]:
        return dict(self.cap)

    def counters(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        return dict(self.counter_values)

    @property
    def last(self) -> tuple[NodeDesired, dict[str, int]]:
        return self.synced[-1]


class FakeLinkWatch:
    def __init__(self) -> None:
        self.appeared: dict[int, float] = {}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def new_veths(self) -> dict[int, float]:
        return dict(self.appeared)

    def appeared_at(self, ifindex: int) -> float | None:
        return self.appeared.get(ifindex)


def make_agent(
    api: StaticApi, dp: FakeDatapath, routes: Routes, linkwatch: FakeLinkWatch | None = None, **cfg: Any
) -> Agent:
    src = api.sources()
    relist(src)
    agent = Agent(
        AgentConfig(node="node-1", health_addr=None, **cfg),
        src,
        datapath_factory=lambda node, pin_root: dp,
        discovery=routes,
        metrics=Metrics(),
        linkwatch=linkwatch,
    )
    agent.interface_exists = lambda ifindex: True
    assert agent._open_datapath()
    return agent


def pod(ns: str, name: str, ip: str, app: str = "web", node: str = "node-1") -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def allow_ports(ns: str, name: str, ports: list[int], generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "generation": generation},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"ports": [{"port": p} for p in ports]}],
        },
    }


def metric(agent: Agent, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (other labels summed over)."""
    return sum(
        s.value
        for family in agent.metrics.registry.collect()
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )
