"""Malformed packets put on the wire from inside a pod do not get past an isolating policy.

BPF_PROG_TEST_RUN (tests/kernel) refuses packets shorter than an IP header and never shows what
the kernel around the programs does, so here hand-built Ethernet frames leave the `t/src` pod
through an AF_PACKET socket on its eth0, cross the node, and an AF_PACKET socket on `t/dst`'s
eth0 captures whatever arrives (it sees frames before the pod's IP stack could drop them).

Both directions run against one lab (module scope), one after the other:
  egress   `t/src` isolated for egress, allowed only TCP 80 to `t/dst`: drops happen at src's
           from_pod hook, counted under (src endpoint, reason, DIR_EGRESS);
  ingress  `t/dst` isolated for ingress, allowed only TCP 80 from `t/src`: src passes everything
           (not isolated), drops happen at dst's to_pod hook, counted under (dst, reason, DIR_INGRESS).
For every case we assert the frame never reaches dst's eth0 and that the expected drop reason
counter (vg_counters, summed over CPUs) grew by the number of frames sent. The node's own IP
stack drops the frames with a broken IPv4 header ((a), (b)) in ip_rcv before they are routed, so
in the ingress direction those two never reach dst's hook: there only "not delivered" is
asserted (the egress direction proves the datapath itself drops them).

Positive controls in the same module prove the capture works: a well-formed SYN to dst:80 sent
the same raw way arrives, one to a denied port does not (DROP_POLICY), and a later fragment of
an allowed first fragment arrives (ALLOW_FRAG), so the fragment cases are not vacuous.

Padded variants ((i): a truncated TCP header / too-short first fragment followed by
link-layer padding after the IP datagram's end) check that the parser bounds its reads by the IP
datagram, not the frame (regression: it once read the padding as the rest of the TCP header and
passed them at src's from_pod); at dst's to_pod the node has already trimmed them.

Each frame is recognised at dst by its bytes from the EtherType on (TTL / hop limit and the IPv4
header checksum, which the node rewrites when forwarding, are masked; a frame the node trims to
its IP length still matches by prefix). Every frame carries a fresh IPv4 id / IPv6 flow label.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath.abi import CounterKey, CounterValue, Reason
from controller.datapath.bpfsys import BpfMap
from controller.lab import netns, topology
from controller.lab.state import LabPaths
from tests.support.labs import ip_link, lab_up, load_model, run_cli
from tests.support.packets import (
    ETH_P_IP,
    ETH_P_IPV6,
    NEXTHDR_DEST,
    NEXTHDR_FRAGMENT,
    NEXTHDR_HOP,
    TCP,
    UDP,
    drain,
    frag_hdr,
    incoming,
    ipv4_packet,
    ipv6_packet,
    is_copy,
    l4_checksummed,
    open_rx,
    open_tx,
    padn,
    tcp,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.bcc,
]

MODEL = load_model("raw-namespace.yaml") + "".join(load_model("raw-pod.yaml", name=n) for n in ("src", "dst"))
POLICIES = {
    "egress": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: raw-src-egress, namespace: t}
spec:
  podSelector: {matchLabels: {app: src}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: dst}}}]
    ports: [{protocol: TCP, port: 80}]
""",
    "ingress": """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: raw-dst-ingress, namespace: t}
spec:
  podSelector: {matchLabels: {app: dst}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: src}}}]
    ports: [{protocol: TCP, port: 80}]
""",
}

ALLOWED_PORT, DENIED_PORT = 80, 81

SETTLE = 0.25  # seconds to keep listening at dst after the drop was counted
DEADLINE = 3.0  # seconds to wait for a counter to grow / a frame to arrive
GRACE = 0.2  # seconds to wait for the expected reason once the hook counted something else


# ---------------------------------------------------------------------------------------------
# The lab side: sockets living in the pods' namespaces, counters in the node's pinned map.


@dataclass
class Env:
    lab: str
    src4: str
    dst4: str
    src6: str
    dst6: str
    src_ep: int  # host-side veth ifindex == ep_id
    dst_ep: int
    src_mac: bytes
    gw_mac: bytes  # the host-side veth of src: where proxy ARP / fe80::1 send src's traffic
    tx: socket.socket  # AF_PACKET on src's eth0
    rx: socket.socket  # AF_PACKET on dst's eth0, every protocol
    counters: BpfMap

    def frame(self, ethertype: int, l3: bytes) -> bytes:
        return self.gw_mac + self.src_mac + struct.pack("!H", ethertype) + l3

    def count(self, ep: int, reason: Reason, direction: int) -> int:
        values = self.counters.lookup_percpu(
            CounterKey(ep_id=ep, reason=int(reason), dir=direction).to_bytes()
        )
        if values is None:
            return 0
        return sum(CounterValue.from_bytes(v).packets for v in values)

    def drain(self) -> None:
        drain(self.rx)

    def received(self, seconds: float, stop: Callable[[list[bytes]], bool] | None = None) -> list[bytes]:
        """Frames that arrived at dst's eth0 (incoming only) within `seconds` (or until stop())."""
        return incoming(self.rx, seconds, stop)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    opened: list[socket.socket] = []
    counters: BpfMap | None = None
    with lab_up(MODEL, timeout=180) as lab:
        try:
            status = lab.status()
            src, dst = status["pods"]["t/src"], status["pods"]["t/dst"]
            node_ns = status["nodes"][src["node"]]["netns"]
            # The sockets are created on threads that entered the pods' namespaces; a socket stays
            # in the namespace it was created in, so the test thread can use them afterwards.
            tx = netns.run_in_netns(src["netns"], open_tx)
            opened.append(tx)
            rx = netns.run_in_netns(dst["netns"], open_rx)
            opened.append(rx)
            src_eth0 = ip_link(src["netns"], "eth0")
            dst_eth0 = ip_link(dst["netns"], "eth0")
            host_side = ip_link(node_ns, topology.pod_ifname("t", "src"))
            assert host_side["ifindex"] == src_eth0["link_index"], "host-side veth of t/src not found"
            counters = BpfMap.open_pinned(str(LabPaths(lab.name).pin_root / src["node"] / "vg_counters"))
            yield Env(
                lab=lab.name,
                src4=next(ip for ip in src["ips"] if ":" not in ip),
                dst4=next(ip for ip in dst["ips"] if ":" not in ip),
                src6=next(ip for ip in src["ips"] if ":" in ip),
                dst6=next(ip for ip in dst["ips"] if ":" in ip),
                src_ep=int(str(src_eth0["link_index"])),
                dst_ep=int(str(dst_eth0["link_index"])),
                src_mac=bytes.fromhex(str(src_eth0["address"]).replace(":", "")),
                gw_mac=bytes.fromhex(str(host_side["address"]).replace(":", "")),
                tx=tx,
                rx=rx,
                counters=counters,
            )
        finally:
            for s in opened:
                s.close()
            if counters is not None:
                counters.close()


@dataclass(frozen=True)
class Phase:
    name: str
    ep: int  # the isolated endpoint
    direction: int  # and its isolated direction

    @property
    def isolated_is_src(self) -> bool:
        return self.name == "egress"


@pytest.fixture(scope="module", params=["egress", "ingress"])
def phase(request: pytest.FixtureRequest, env: Env) -> Iterator[Phase]:
    """Isolate src for egress, or dst for ingress (only one at a time, so that a drop at src
    does not hide what dst's hook would do)."""
    which: str = request.param
    run_cli("apply", "--name", env.lab, "-f", "-", stdin=POLICIES[which])
    try:
        if which == "egress":
            yield Phase(which, env.src_ep, DIR_EGRESS)
        else:
            yield Phase(which, env.dst_ep, DIR_INGRESS)
    finally:
        run_cli("delete", "--name", env.lab, "-f", "-", stdin=POLICIES[which])


def fresh_id() -> int:
    return random.randrange(0x100, 0xFFFF)


def send(env: Env, frames: list[bytes]) -> None:
    env.drain()
    for f in frames:
        env.tx.send(f)


def hook_counts(env: Env, ep: int, direction: int) -> dict[Reason, int]:
    return {r: env.count(ep, r, direction) for r in Reason}


def counted_since(
    env: Env, ep: int, direction: int, before: dict[Reason, int], n: int, expect: Reason
) -> dict[Reason, int]:
    """Wait until the hook (ep, direction) has counted n more packets under `expect` (or, for a
    wrong verdict, under any reason for at least GRACE seconds); return the reasons that grew and
    by how much. Packets the hook passes on its own (ARP, ND...) may be among them."""
    start = time.monotonic()
    while True:
        now = hook_counts(env, ep, direction)
        waited = time.monotonic() - start
        if (
            now[expect] - before[expect] >= n
            or (sum(now.values()) - sum(before.values()) >= n and waited > GRACE)
            or waited > DEADLINE
        ):
            return {r: now[r] - before[r] for r in Reason if now[r] != before[r]}
        time.sleep(0.02)


def drops(delta: dict[Reason, int]) -> dict[str, int]:
    return {r.name: d for r, d in delta.items() if r.is_drop}


# ---------------------------------------------------------------------------------------------
# The malformed cases. Each builds its frames for a given env; `reason` is the drop reason the
# isolated hook must count; `node_drops_first` marks frames the node's IP stack discards before
# routing, which therefore never reach dst's ingress hook.


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Env], list[bytes]]
    reason: Reason
    node_drops_first: bool = False
    padded: bool = False  # the frame carries bytes after the IP datagram's end


def _a_ipv4_header_truncated(e: Env) -> list[bytes]:
    full = ipv4_packet(e.src4, e.dst4, TCP, tcp(40000, 80, seq=None), ident=fresh_id())
    return [e.frame(ETH_P_IP, full[:16]), e.frame(ETH_P_IP, full[:19])]


def _b_ipv4_options_cut(e: Env) -> list[bytes]:
    nops = b"\x01" * 12  # IHL 15 promises 40 option bytes; the frame ends after 12 of them
    return [e.frame(ETH_P_IP, ipv4_packet(e.src4, e.dst4, TCP, b"", ident=fresh_id(), ihl=15, options=nops))]


def _c_tcp_2_bytes(e: Env) -> list[bytes]:
    return [
        e.frame(ETH_P_IP, ipv4_packet(e.src4, e.dst4, TCP, tcp(40001, 80, seq=None)[:2], ident=fresh_id()))
    ]


def _d_udp_4_bytes(e: Env) -> list[bytes]:
    return [
        e.frame(ETH_P_IP, ipv4_packet(e.src4, e.dst4, UDP, struct.pack("!HH", 40002, 80), ident=fresh_id()))
    ]


def _e_ipv4_nonfirst_fragment(e: Env) -> list[bytes]:
    return [e.frame(ETH_P_IP, ipv4_packet(e.src4, e.dst4, TCP, b"f" * 16, ident=fresh_id(), frag_offset=24))]


def _f_ipv6_ext_chain_cut(e: Env) -> list[bytes]:
    hop = bytes([NEXTHDR_DEST, 0]) + padn(6)  # 8 bytes, complete
    dest = bytes([TCP, 1]) + padn(6)  # says 16 bytes; only 8 follow
    return [e.frame(ETH_P_IPV6, ipv6_packet(e.src6, e.dst6, NEXTHDR_HOP, hop + dest, flow=fresh_id()))]


def _f2_ipv6_ext_hdr_cut_inside_first_two_bytes(e: Env) -> list[bytes]:
    hop = bytes([NEXTHDR_DEST, 0]) + padn(6)
    return [
        e.frame(ETH_P_IPV6, ipv6_packet(e.src6, e.dst6, NEXTHDR_HOP, hop + bytes([TCP]), flow=fresh_id()))
    ]


def _g_ipv6_nonfirst_fragment(e: Env) -> list[bytes]:
    payload = frag_hdr(TCP, 24, False, fresh_id()) + b"f" * 16
    return [e.frame(ETH_P_IPV6, ipv6_packet(e.src6, e.dst6, NEXTHDR_FRAGMENT, payload, flow=fresh_id()))]


def _h_ipv4_first_fragment_too_short(e: Env) -> list[bytes]:
    l4 = tcp(40003, 80, seq=None)[:8]  # ports and sequence number, no flags: 8 bytes, MF set
    return [e.frame(ETH_P_IP, ipv4_packet(e.src4, e.dst4, TCP, l4, ident=fresh_id(), more_fragments=True))]


def _h6_ipv6_first_fragment_too_short(e: Env) -> list[bytes]:
    payload = frag_hdr(TCP, 0, True, fresh_id()) + tcp(40004, 80, seq=None)[:8]
    return [e.frame(ETH_P_IPV6, ipv6_packet(e.src6, e.dst6, NEXTHDR_FRAGMENT, payload, flow=fresh_id()))]


def _i_tcp_2_bytes_behind_link_padding(e: Env) -> list[bytes]:
    """(c) again, but the frame goes on after the IP datagram's end (total length 22) with
    link-layer padding that looks like the rest of a TCP header to port 80."""
    segment = tcp(40005, 80, seq=None)
    packet = ipv4_packet(e.src4, e.dst4, TCP, segment, ident=fresh_id(), total_length=22)
    return [e.frame(ETH_P_IP, packet)]


def _i6_ipv6_tcp_2_bytes_behind_link_padding(e: Env) -> list[bytes]:
    segment = tcp(40006, 80, seq=None)
    return [e.frame(ETH_P_IPV6, ipv6_packet(e.src6, e.dst6, TCP, segment, flow=fresh_id(), payload_length=2))]


def _i_first_fragment_too_short_behind_link_padding(e: Env) -> list[bytes]:
    """(h) again: 8 bytes of TCP in a first fragment, the rest of the header in padding."""
    packet = ipv4_packet(
        e.src4, e.dst4, TCP, tcp(40007, 80, seq=None), ident=fresh_id(), more_fragments=True, total_length=28
    )
    return [e.frame(ETH_P_IP, packet)]


CASES = [
    Case("a_ipv4_header_truncated", _a_ipv4_header_truncated, Reason.DROP_MALFORMED, node_drops_first=True),
    Case("b_ipv4_ihl15_options_cut", _b_ipv4_options_cut, Reason.DROP_MALFORMED, node_drops_first=True),
    Case("c_ipv4_tcp_2_byte_header", _c_tcp_2_bytes, Reason.DROP_MALFORMED),
    Case("d_ipv4_udp_4_byte_header", _d_udp_4_bytes, Reason.DROP_MALFORMED),
    Case("e_ipv4_nonfirst_fragment", _e_ipv4_nonfirst_fragment, Reason.DROP_FRAG_UNKNOWN),
    Case("f_ipv6_hop_dest_chain_last_cut", _f_ipv6_ext_chain_cut, Reason.DROP_MALFORMED),
    Case(
        "f2_ipv6_hop_dest_chain_cut_in_2_bytes",
        _f2_ipv6_ext_hdr_cut_inside_first_two_bytes,
        Reason.DROP_MALFORMED,
    ),
    Case("g_ipv6_nonfirst_fragment", _g_ipv6_nonfirst_fragment, Reason.DROP_FRAG_UNKNOWN),
    Case("h_ipv4_first_fragment_too_short", _h_ipv4_first_fragment_too_short, Reason.DROP_MALFORMED),
    Case("h6_ipv6_first_fragment_too_short", _h6_ipv6_first_fragment_too_short, Reason.DROP_MALFORMED),
    Case(
        "i_ipv4_tcp_2_bytes_link_padding",
        _i_tcp_2_bytes_behind_link_padding,
        Reason.DROP_MALFORMED,
        padded=True,
    ),
    Case(
        "i6_ipv6_tcp_2_bytes_link_padding",
        _i6_ipv6_tcp_2_bytes_behind_link_padding,
        Reason.DROP_MALFORMED,
        padded=True,
    ),
    Case(
        "i_ipv4_short_first_fragment_link_padding",
        _i_first_fragment_too_short_behind_link_padding,
        Reason.DROP_MALFORMED,
        padded=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_malformed_frame_does_not_get_past_the_isolated_direction(
    env: Env, phase: Phase, case: Case
) -> None:
    frames = case.build(env)
    before = hook_counts(env, phase.ep, phase.direction)
    send(env, frames)
    reaches_hook = phase.isolated_is_src or not case.node_drops_first
    delta = (
        counted_since(env, phase.ep, phase.direction, before, len(frames), case.reason)
        if reaches_hook
        else {}
    )
    arrived = [
        r
        for r in env.received(SETTLE if reaches_hook else SETTLE + 0.4)
        if any(is_copy(r, f) for f in frames)
    ]
    counted = {r.name: d for r, d in delta.items()}
    assert not arrived, (
        f"{case.name}: {len(arrived)} frame(s) reached t/dst ({phase.name} hook counted {counted}): "
        f"{[a.hex() for a in arrived]}"
    )
    if reaches_hook:
        assert drops(delta) == {case.reason.name: len(frames)}, (
            f"{case.name}: the {phase.name} hook of endpoint {phase.ep} counted {counted}"
        )


def _syn(env: Env, dport: int) -> bytes:
    segment = l4_checksummed(env.src4, env.dst4, TCP, tcp(random.randrange(20000, 60000), dport, seq=None))
    return env.frame(ETH_P_IP, ipv4_packet(env.src4, env.dst4, TCP, segment, ident=fresh_id()))


def test_a_well_formed_syn_to_the_allowed_port_arrives(env: Env, phase: Phase) -> None:
    frame = _syn(env, ALLOWED_PORT)
    before = hook_counts(env, phase.ep, phase.direction)
    send(env, [frame])
    arrived = env.received(DEADLINE, stop=lambda got: any(is_copy(g, frame) for g in got))
    delta = counted_since(env, phase.ep, phase.direction, before, 1, Reason.ALLOW_POLICY)
    assert any(is_copy(r, frame) for r in arrived), (
        f"the raw SYN to dst:80 never reached t/dst (capture broken?); hook counted {delta}"
    )
    assert delta.get(Reason.ALLOW_POLICY) == 1 and not drops(delta)


def test_a_well_formed_syn_to_a_denied_port_does_not_arrive(env: Env, phase: Phase) -> None:
    frame = _syn(env, DENIED_PORT)
    before = hook_counts(env, phase.ep, phase.direction)
    send(env, [frame])
    delta = counted_since(env, phase.ep, phase.direction, before, 1, Reason.DROP_POLICY)
    assert not [r for r in env.received(SETTLE) if is_copy(r, frame)], f"hook counted {delta}"
    assert drops(delta) == {"DROP_POLICY": 1}, f"hook counted {delta}"


def test_a_later_fragment_of_an_allowed_first_fragment_arrives(env: Env, phase: Phase) -> None:
    """Control for (e)/(g): a non-first fragment is deliverable when its first fragment was allowed."""
    ident = fresh_id()
    segment = tcp(random.randrange(20000, 60000), ALLOWED_PORT, payload=b"p" * 4, seq=None)  # 24 bytes
    first = env.frame(
        ETH_P_IP, ipv4_packet(env.src4, env.dst4, TCP, segment, ident=ident, more_fragments=True)
    )
    later = env.frame(ETH_P_IP, ipv4_packet(env.src4, env.dst4, TCP, b"q" * 16, ident=ident, frag_offset=24))
    before = hook_counts(env, phase.ep, phase.direction)
    send(env, [first, later])
    arrived = env.received(
        DEADLINE, stop=lambda got: all(any(is_copy(g, f) for g in got) for f in (first, later))
    )
    delta = counted_since(env, phase.ep, phase.direction, before, 1, Reason.ALLOW_FRAG)
    assert [any(is_copy(r, f) for r in arrived) for f in (first, later)] == [True, True], (
        f"hook counted {delta}"
    )
    assert delta.get(Reason.ALLOW_POLICY) == 1 and delta.get(Reason.ALLOW_FRAG) == 1 and not drops(delta)
