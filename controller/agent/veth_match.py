"""Which host-side veth belongs to which pod, decided purely from the node's tables (routes,
links, neighbours, bridge FDB): the types those tables decode to and the matching strategies
(routed: a host route per pod IP; bridged: neighbour MAC -> learned FDB port). The netlink
reading and the strategy chosen per pod are in controller.agent.discovery."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

RT_TABLE_MAIN = 254
RTN_UNICAST = 1
# neighbour states (linux/neighbour.h)
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
PROBE_PORT = 9  # discard


@dataclass(frozen=True)
class Route:
    """The fields of a kernel route that discovery needs."""

    dst: str  # address without prefix length ("" for a default route)
    dst_len: int
    oif: int | None  # None for multipath / unreachable routes
    table: int = RT_TABLE_MAIN
    type: int = RTN_UNICAST


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # "veth", "bridge", ... (IFLA_INFO_KIND); None when the kernel gives none
    master: int | None = None  # IFLA_MASTER: the bridge a port belongs to
    address: str | None = None  # MAC (lower case)


@dataclass(frozen=True)
class Neighbour:
    """A neighbour table entry (IPv4 ARP or IPv6 ND)."""

    ip: str
    ifindex: int
    mac: str | None  # None while unresolved
    state: int = NUD_STALE


@dataclass(frozen=True)
class FdbEntry:
    """A bridge forwarding database entry: `mac` was seen on (or belongs to) port `port`."""

    mac: str
    port: int
    master: int | None  # the bridge (NDA_MASTER); None for a device's own (self) entries
    state: int = NUD_REACHABLE  # NUD_PERMANENT for the node's own addresses and static entries


@dataclass(frozen=True)
class PortBinding:
    """What the bridge strategy learned about a pod: its addresses, MAC and bridge port."""

    ips: tuple[str, ...]
    mac: str
    port: int


@dataclass
class Discovered:
    """Result of a discovery pass."""

    pod_ifindex: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # local pods with no host route (yet)
    conflicts: dict[str, list[int]] = field(default_factory=dict)  # pod -> distinct ifindexes seen
    unclaimed: list[int] = field(default_factory=list)  # veth ports of a bridge no pod claims (yet)
    strategy: dict[str, str] = field(default_factory=dict)  # pod -> "route" | "bridge"
    bindings: dict[str, PortBinding] = field(default_factory=dict)  # bridge-strategy pods

    def attachments(self) -> dict[str, int]:
        """What the agent attaches and syncs: pod -> ifindex, plus one placeholder key per
        unclaimed bridge port. The datapath gives a key without a desired endpoint a PENDING
        endpoint, so an unknown pod's veth is failed closed (IP dropped; ARP/ND pass, so its MAC
        can still be learned) until discovery knows its pod."""
        out = dict(self.pod_ifindex)
        for ifindex in self.unclaimed:
            out[unclaimed_key(ifindex)] = ifindex
        return out


UNCLAIMED = "(unclaimed)/"  # pod_ifindex key prefix of a veth no known pod claims (PENDING)


def unclaimed_key(ifindex: int) -> str:
    """Placeholder endpoint name of a veth no pod claims yet: an unclaimed bridge port, or a new
    veth failed closed by the agent (no Kubernetes namespace contains parentheses, so it never
    names a pod)."""
    return f"{UNCLAIMED}{ifindex}"


def is_placeholder(pod: str) -> bool:
    """Whether a pod_ifindex key is an unclaimed_key()."""
    return pod.startswith(UNCLAIMED)


class Discovery(Protocol):
    def discover(self, pod_ips: Mapping[str, Sequence[str]]) -> Discovered: ...


def _host_prefix(addr: str) -> tuple[str, int] | None:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    return (str(ip), ip.max_prefixlen)


def match_routes(
    pod_ips: Mapping[str, Sequence[str]],
    routes: Iterable[Route],
    links: Mapping[int, Link] | None = None,
    *,
    table: int = RT_TABLE_MAIN,
) -> Discovered:
    """Map each pod to the output interface of the host route to its IPs (pure).

    Only unicast /32 and /128 routes of `table` with an output interface count. When `links` is
    given, the interface must exist and, if the kernel reports a kind, be a veth. A pod whose IPs
    route to different interfaces takes the interface most of them use (ties: the first IP's), and
    is reported in `conflicts`.
    """
    by_dst: dict[str, int] = {}
    for r in routes:
        if r.table != table or r.type != RTN_UNICAST or r.oif is None or not r.dst:
            continue
        hp = _host_prefix(r.dst)
        if hp is None or r.dst_len != hp[1]:
            continue
        if links is not None:
            link = links.get(r.oif)
            if link is None or (link.kind is not None and link.kind != "veth"):
                continue
        by_dst[hp[0]] = r.oif

    out = Discovered()
    for pod, ips in sorted(pod_ips.items()):
        found: list[int] = []
        for ip in ips:
            hp = _host_prefix(ip)
            if hp is not None and hp[0] in by_dst:
                found.append(by_dst[hp[0]])
        if not found:
            out.missing.append(pod)
            continue
        counts = Counter(found)
        best = max(counts.values())
        chosen = next(i for i in found if counts[i] == best)
        out.pod_ifindex[pod] = chosen
        out.strategy[pod] = "route"
        if len(counts) > 1:
            out.conflicts[pod] = sorted(counts)
    return out


def _canonical(addr: str) -> str | None:
    hp = _host_prefix(addr)
    return hp[0] if hp is not None else None


def pod_key_ips(ips: Sequence[str]) -> tuple[str, ...]:
    return tuple(c for c in (_canonical(ip) for ip in ips) if c is not None)


def bridge_ports(links: Mapping[int, Link]) -> dict[int, int]:
    """Veth ports of bridges: port ifindex -> bridge ifindex (pure)."""
    bridges = {i for i, link in links.items() if link.kind == "bridge"}
    return {
        i: link.master for i, link in links.items() if link.master in bridges and link.kind in ("veth", None)
    }


def learned_macs(fdb: Iterable[FdbEntry], links: Mapping[int, Link]) -> dict[tuple[int, str], set[int]]:
    """(bridge, MAC) -> ports the bridge learned it on, for veth ports (pure).

    Permanent entries (the node's own port and bridge addresses, static entries) and the MACs of
    the node's own interfaces never identify a pod."""
    ports = bridge_ports(links)
    own = {link.address.lower() for link in links.values() if link.address}
    out: dict[tuple[int, str], set[int]] = {}
    for entry in fdb:
        bridge = ports.get(entry.port)
        mac = entry.mac.lower()
        if bridge is None or entry.master not in (None, bridge) or entry.state & NUD_PERMANENT:
            continue
        if mac in own or _is_multicast_mac(mac):
            continue
        out.setdefault((bridge, mac), set()).add(entry.port)
    return out


def _is_multicast_mac(mac: str) -> bool:
    try:
        return bool(int(mac.split(":")[0], 16) & 1)
    except ValueError:
        return True


def pod_bridges(
    pod_ips: Mapping[str, Sequence[str]], routes: Iterable[Route], links: Mapping[int, Link]
) -> set[int]:
    """Bridges that carry pods: a subnet route through the bridge covers a local pod's IP (cni0's
    10.244.1.0/24 does, docker0's 172.17.0.0/16 does not) (pure)."""
    bridges = {i for i, link in links.items() if link.kind == "bridge"}
    addresses = [ipaddress.ip_address(c) for ips in pod_ips.values() for c in pod_key_ips(ips)]
    out: set[int] = set()
    for r in routes:
        if r.oif not in bridges or r.type != RTN_UNICAST or not r.dst or r.table != RT_TABLE_MAIN:
            continue
        try:
            network = ipaddress.ip_network(f"{r.dst}/{r.dst_len}", strict=False)
        except ValueError:
            continue
        if any(a.version == network.version and a in network for a in addresses):
            out.add(r.oif)
    return out


def match_bridge(
    pod_ips: Mapping[str, Sequence[str]],
    neighbours: Iterable[Neighbour],
    fdb: Iterable[FdbEntry],
    links: Mapping[int, Link],
    remembered: Mapping[str, PortBinding] | None = None,
    carrying_pods: set[int] | None = None,
) -> Discovered:
    """Map pods to bridge ports: pod IP -> MAC (neighbour on a bridge) -> port (FDB) (pure).

    A neighbour entry counts when it has a MAC and is not FAILED/INCOMPLETE, on a bridge that has
    veth ports; its MAC must be learned on exactly one veth port of that same bridge. A pod with
    no such evidence keeps its `remembered` binding while it is still consistent: same IPs, the
    port is still a veth port of a bridge, and the MAC is not learned on another port. A port that
    several pods resolve to goes to none of them (`conflicts`, fail closed). `unclaimed` lists the
    veth ports no pod was given of the bridges in `carrying_pods` (default: every bridge), so
    that a non-pod bridge (docker0 beside a CNI) is never failed closed.
    """
    ports = bridge_ports(links)
    bridges = set(ports.values())
    macs = learned_macs(fdb, links)
    by_ip: dict[str, list[tuple[int, str]]] = {}
    for n in neighbours:
        ip = _canonical(n.ip)
        if ip is None or n.mac is None or n.ifindex not in bridges or n.state & (NUD_INCOMPLETE | NUD_FAILED):
            continue
        by_ip.setdefault(ip, []).append((n.ifindex, n.mac.lower()))

    claims: dict[str, PortBinding] = {}
    out = Discovered()
    for pod, ips in sorted(pod_ips.items()):
        key_ips = pod_key_ips(ips)
        found: list[tuple[int, str]] = []  # (port, mac) per address with evidence
        for ip in key_ips:
            for bridge, mac in by_ip.get(ip, ()):
                seen_on = macs.get((bridge, mac), set())
                if len(seen_on) == 1:
                    found.append((next(iter(seen_on)), mac))
        binding = _choose(pod, key_ips, found, out)
        if binding is None:
            binding = _recall((remembered or {}).get(pod), key_ips, ports, macs)
        if binding is None:
            out.missing.append(pod)
        else:
            claims[pod] = binding

    owners: dict[int, list[str]] = {}
    for pod, binding in claims.items():
        owners.setdefault(binding.port, []).append(pod)
    for port, pods in owners.items():
        if len(pods) > 1:
            for pod in pods:
                out.conflicts[pod] = sorted({*out.conflicts.get(pod, []), port})
                out.missing.append(pod)
            continue
        pod = pods[0]
        out.pod_ifindex[pod] = port
        out.bindings[pod] = claims[pod]
        out.strategy[pod] = "bridge"
    out.missing.sort()
    eligible = {p for p, b in ports.items() if carrying_pods is None or b in carrying_pods}
    out.unclaimed = sorted(eligible - set(out.pod_ifindex.values()))
    return out


def _choose(
    pod: str, ips: tuple[str, ...], found: list[tuple[int, str]], out: Discovered
) -> PortBinding | None:
    """The port most of the pod's addresses resolve to (ties: the first address's)."""
    if not found:
        return None
    counts = Counter(port for port, _ in found)
    best = max(counts.values())
    port, mac = next((p, m) for p, m in found if counts[p] == best)
    if len(counts) > 1:
        out.conflicts[pod] = sorted(counts)
    return PortBinding(ips, mac, port)


def _recall(
    binding: PortBinding | None,
    ips: tuple[str, ...],
    ports: Mapping[int, int],
    macs: Mapping[tuple[int, str], set[int]],
) -> PortBinding | None:
    """A remembered binding, if nothing since contradicts it."""
    if binding is None or binding.ips != ips or binding.port not in ports:
        return None
    seen_on = macs.get((ports[binding.port], binding.mac), set())
    if seen_on and seen_on != {binding.port}:
        return None
    return binding


def merge(route: Discovered, bridge: Discovered) -> Discovered:
    """Route-strategy results first; the bridge strategy covers the pods routes did not find.
    A veth port claimed through a host route is not unclaimed."""
    out = Discovered(
        pod_ifindex={**bridge.pod_ifindex, **route.pod_ifindex},
        missing=sorted(p for p in bridge.missing if p not in route.pod_ifindex),
        conflicts={**bridge.conflicts, **route.conflicts},
        strategy={**bridge.strategy, **route.strategy},
        bindings={p: b for p, b in bridge.bindings.items() if p not in route.pod_ifindex},
    )
    claimed = set(out.pod_ifindex.values())
    out.unclaimed = [i for i in bridge.unclaimed if i not in claimed]
    return out


def probe_targets(
    found: Discovered,
    pod_ips: Mapping[str, Sequence[str]],
    last_probe: Mapping[str, float],
    now: float,
    interval: float,
) -> list[str]:
    """Addresses to probe: those of still-missing pods, only while some bridge port is unclaimed
    (a probe could not help otherwise), each at most once per `interval` (pure)."""
    if not found.unclaimed:
        return []
    out = []
    for pod in found.missing:
        for ip in pod_key_ips(pod_ips.get(pod, ())):
            if now - last_probe.get(ip, float("-inf")) >= interval:
                out.append(ip)
    return out


def may_claim_pending(
    kind: str, event_type: str, obj: Any, node: str, synced_pod_ifindex: Mapping[str, int] | None
) -> bool:
    """Whether a cluster event may let a pass claim a new veth that waits PENDING for its pod: a
    Pod of this node added or changed while the last synced state has a placeholder veth."""
    if kind != "Pod" or event_type not in ("ADDED", "MODIFIED"):
        return False
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    if not isinstance(spec, Mapping) or spec.get("nodeName") != node:
        return False
    return any(is_placeholder(p) for p in synced_pod_ifindex or ())
