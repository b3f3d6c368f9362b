"""The kernel-test harness: one compiled Datapath's maps set up by hand and packets run through
its programs with BPF_PROG_TEST_RUN against ifindex 1 (lo, resolved in the test process's netns),
so one endpoint keyed by 1 sees every test packet. tests/kernel/conftest.py makes the fixtures."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from controller.bench.testrun import run
from controller.compiler.desired_state import EndpointDesired, NodeDesired, PolicyEntryKey, PolicyEntryValue
from controller.datapath import abi, bpfsys, codecs, encoding, loader, readback, sync
from controller.datapath.node import Datapath

TC_ACT_OK = 0
TC_ACT_SHOT = 2
EP = 1  # lo: the endpoint every test packet is run against

POD_A = "10.244.1.10"  # the endpoint
POD_A6 = "fd00:10:244:1::10"
NODE_IP = "10.244.1.1"
NODE_IP6 = "fd00:10:244:1::1"
POD_B = "10.244.1.20"
POD_B6 = "fd00:10:244:1::20"
POD_C = "10.244.2.30"
POD_C6 = "fd00:10:244:2::30"
ID_A, ID_B, ID_C = 256, 257, 258


@dataclass
class Harness:
    dp: Datapath

    # -- map setup
    def clock_readings(self) -> list[abi.ClockCache]:
        """vg_clock's reading on every CPU (bpf/lib/clock.h)."""
        per_cpu = self.dp.maps["vg_clock"].lookup_percpu(codecs.u32_key(0)) or []
        return [abi.ClockCache.from_bytes(v) for v in per_cpu]

    def set_clock_readings(self, reading: abi.ClockCache) -> None:
        """Plant `reading` on every CPU; ClockCache() is none (jiffies 0 never matches)."""
        self.dp.maps["vg_clock"].update(codecs.u32_key(0), bytes(reading) * bpfsys.possible_cpus())

    def endpoint(
        self,
        *,
        ingress_isolated: bool = False,
        egress_isolated: bool = False,
        pending: bool = False,
        identity: int = ID_A,
        ifindex: int = EP,
        slot: int = 1,
        ipv4: str = POD_A,
    ) -> None:
        """The endpoint on `ifindex`, with a slot as the agent gives every endpoint (so flows
        take the established fast path once the full path has judged them)."""
        flags = encoding.endpoint_flags(ingress_isolated, egress_isolated) | (
            abi.EP_F_PENDING if pending else 0
        )
        k, v = codecs.encode_endpoint(ifindex, identity, flags, ipv4, POD_A6, slot=slot)
        self.dp.maps["vg_endpoints"].update(k, v)

    def ipcache(self, prefix: str, identity: int, cidr_identity: int = 0, ns_identity: int = 0) -> None:
        k, v = codecs.encode_ipcache(readback.ipnet(prefix), identity, cidr_identity, ns_identity)
        name = "vg_ipcache4" if ":" not in prefix else "vg_ipcache6"
        self.dp.maps[name].update(k, v)

    def allow(
        self,
        direction: int,
        identity: int,
        proto: int = 0,
        port: int = 0,
        port_plen: int | None = None,
        rule_ref: int = 4242,
    ) -> bytes:
        plen = port_plen if port_plen is not None else (16 if port else 0)
        key = PolicyEntryKey(direction=direction, identity=identity, proto=proto, port=port, port_plen=plen)
        k, v = codecs.encode_policy(EP, key, PolicyEntryValue(verdict=1, rule_ref=rule_ref))
        self.dp.maps["vg_policy"].update(k, v)
        return k

    def bump(self) -> int:
        return sync.bump_revision(self.dp.maps["vg_config"])

    # -- running packets
    def from_pod(self, frame: bytes, ifindex: int = EP) -> int:
        """The pod sends `frame` (tc ingress of the host veth). Returns the tc verdict."""
        return run(self.dp.prog_fd("from_pod"), frame, ifindex=ifindex).retval

    def to_pod(self, frame: bytes, ifindex: int = EP, *, arrived_on: int = 0, mark: int = 0) -> int:
        """`frame` is delivered to the pod (tc egress of the host veth), having arrived on the
        interface `arrived_on` (skb->skb_iif; 0: sent by the node itself), with skb->mark."""
        prog = self.dp.prog_fd("to_pod")
        return run(prog, frame, ifindex=ifindex, ingress_ifindex=arrived_on, mark=mark).retval

    def from_uplink(self, frame: bytes, uplink: int = EP) -> int:
        """`frame` arrives from outside the node on an uplink (tc ingress)."""
        return run(self.dp.prog_fd("from_uplink"), frame, ifindex=uplink).retval

    def local(self, address: str, ifindex: int = 0) -> None:
        """vg_local: an address of this node (ifindex 0) or of a local pod (its veth)."""
        self.dp.maps["vg_local"].update(*codecs.encode_local(address, ifindex))

    def counters(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        return self.dp.counters()

    def count(self, reason: abi.Reason, direction: int) -> int:
        return self.counters().get((EP, int(reason), direction), (0, 0))[0]


def build_tail_ids(d: Datapath) -> dict[int, int | None]:
    """vg_tail as d's build fills it: slot -> id of that build's program (loader.TAIL_PROGRAMS)."""
    return {slot: d.prog_id(name).id for slot, name in loader.TAIL_PROGRAMS.items()}


def desired_node(
    entries: dict[PolicyEntryKey, PolicyEntryValue], pods: tuple[str, ...] = ("x/a",)
) -> NodeDesired:
    """A node whose pods (the first at POD_A) share identity 256, are isolated for ingress and hold
    `entries`; the ipcache knows POD_A, POD_B and the world."""
    eps = {
        pod: EndpointDesired(
            pod=pod,
            identity=256,
            ingress_isolated=True,
            egress_isolated=False,
            ipv4=POD_A if i == 0 else f"10.244.1.{100 + i}",
            ipv6=None,
            entries=entries,
        )
        for i, pod in enumerate(pods)
    }
    return NodeDesired(
        endpoints=eps,
        ipcache={
            ipaddress.ip_network(f"{POD_B}/32"): (ID_B, 0, 0),
            ipaddress.ip_network(f"{POD_A}/32"): (256, 0, 0),
            ipaddress.ip_network("0.0.0.0/0"): (2, 0, 0),
        },
        rules={},
        identities={},
    )
