"""What a pod learns from its DNS answers, for domainNames rules (pure; bpf/lib/dns.h holds the
answers, controller/datapath/dns_release.py sends them on, the agent writes vg_dns_learned).

The programs copy every DNS query of a pod that learns from DNS and hold every answer to one.
An answer teaches the pod only when it answers a query that pod sent: same pod, same ports and
server, same DNS id and question, within QUERY_WAIT seconds, once (so a spoofed answer, or a
second answer to one query, teaches nothing). Then every A/AAAA record of its answer section,
the CNAME chain's end included, is learned under the domain identity of the question's name,
for max(TTL, MIN_HOLD) seconds. An answer is released whatever it teaches: DNS itself is not
filtered here.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from controller.core import dnswire

QUERY_WAIT = 10.0  # seconds an unanswered query is remembered
MAX_PENDING = 4096  # queries remembered per node (the oldest are forgotten first)
MIN_HOLD = 5  # seconds: an address is learned at least this long, whatever the TTL
ETH_HLEN = 14
_ETH_P_IP, _ETH_P_IPV6 = 0x0800, 0x86DD
_UDP, _TCP = 17, 6


@dataclass(frozen=True)
class Frame:
    """The addresses, ports and DNS payload of a frame from vg_dns_held."""

    family: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    l4_offset: int
    payload: bytes  # the DNS message (TCP: after its 2-byte length)


class FrameError(ValueError):
    """A frame that is not IPv4/IPv6 UDP or TCP with a DNS message."""


def parse_frame(frame: bytes) -> Frame:
    if len(frame) < ETH_HLEN:
        raise FrameError("shorter than an Ethernet header")
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == _ETH_P_IP:
        if len(frame) < ETH_HLEN + 20:
            raise FrameError("truncated IPv4 header")
        ihl = (frame[ETH_HLEN] & 0x0F) * 4
        (total,) = struct.unpack_from("!H", frame, ETH_HLEN + 2)
        proto = frame[ETH_HLEN + 9]
        src = str(ipaddress.IPv4Address(frame[ETH_HLEN + 12 : ETH_HLEN + 16]))
        dst = str(ipaddress.IPv4Address(frame[ETH_HLEN + 16 : ETH_HLEN + 20]))
        l4, end, family = ETH_HLEN + ihl, ETH_HLEN + total, 4
    elif ethertype == _ETH_P_IPV6:
        if len(frame) < ETH_HLEN + 40:
            raise FrameError("truncated IPv6 header")
        (plen,) = struct.unpack_from("!H", frame, ETH_HLEN + 4)
        proto = frame[ETH_HLEN + 6]  # (the programs' DNS packets carry no extension headers)
        src = str(ipaddress.IPv6Address(frame[ETH_HLEN + 8 : ETH_HLEN + 24]))
        dst = str(ipaddress.IPv6Address(frame[ETH_HLEN + 24 : ETH_HLEN + 40]))
        l4, end, family = ETH_HLEN + 40, ETH_HLEN + 40 + plen, 6
    else:
        raise FrameError(f"ethertype 0x{ethertype:04x} is not IP")
    if end > len(frame) or l4 > end:
        raise FrameError("IP length past the end of the frame")
    if proto == _UDP:
        if l4 + 8 > end:
            raise FrameError("truncated UDP header")
        sport, dport = struct.unpack_from("!HH", frame, l4)
        payload = frame[l4 + 8 : end]
    elif proto == _TCP:
        if l4 + 20 > end:
            raise FrameError("truncated TCP header")
        sport, dport = struct.unpack_from("!HH", frame, l4)
        data = frame[l4 + (frame[l4 + 12] >> 4) * 4 : end]
        if len(data) < 2:
            raise FrameError("a TCP segment without a DNS message")
        (length,) = struct.unpack_from("!H", data)
        payload = data[2 : 2 + length]
        if len(payload) != length:
            raise FrameError("a DNS message over more than one TCP segment")
    else:
        raise FrameError(f"IP protocol {proto} is neither UDP nor TCP")
    return Frame(family, src, dst, proto, sport, dport, l4, payload)


class DomainMatcher(Protocol):
    """The domain identity of a name a pod asked for, or None (stages/domains.DomainClasses)."""

    def identity(self, name: str) -> int | None: ...


@dataclass(frozen=True)
class Learned:
    ep_id: int
    address: str
    identity: int
    ttl: int  # seconds the entry is good for new flows
    name: str  # the question the address answered (for explain and observe)


_QueryKey = tuple[int, int, str, int, str, int, int]  # ep, proto, pod, pod port, server, server port, id


class Learner:
    """Pending queries and the answers that match them. Not thread-safe: one reader of the ring."""

    def __init__(self, matcher: Callable[[], DomainMatcher], clock: Callable[[], float]) -> None:
        self.matcher = matcher
        self.clock = clock
        self.pending: OrderedDict[_QueryKey, tuple[dnswire.Question, float]] = OrderedDict()
        self.ignored: dict[str, int] = {}  # why answers taught nothing -> count (metrics)

    def _ignore(self, why: str) -> list[Learned]:
        self.ignored[why] = self.ignored.get(why, 0) + 1
        return []

    def query(self, ep_id: int, frame: bytes) -> None:
        """A query the pod sent (a copy): remembered for its answer."""
        try:
            f = parse_frame(frame)
            msg = dnswire.decode(f.payload)
        except (FrameError, dnswire.DnsWireError):
            return
        if msg.is_response or len(msg.questions) != 1:
            return
        now = self.clock()
        self._expire(now)
        key = (ep_id, f.proto, f.src, f.sport, f.dst, f.dport, msg.id)
        self.pending[key] = (msg.questions[0], now + QUERY_WAIT)
        self.pending.move_to_end(key)
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)

    def answer(self, ep_id: int, frame: bytes) -> list[Learned]:
        """An answer held for the pod: what it teaches (possibly nothing). The caller releases
        the frame afterwards in any case."""
        try:
            f = parse_frame(frame)
            msg = dnswire.decode(f.payload)
        except (FrameError, dnswire.DnsWireError):
            return self._ignore("malformed")
        self._expire(self.clock())
        key = (ep_id, f.proto, f.dst, f.dport, f.src, f.sport, msg.id)
        asked = self.pending.pop(key, None)
        if asked is None:
            return self._ignore("unasked")
        question = asked[0]
        if not msg.is_response or msg.questions != (question,):
            return self._ignore("other question")
        identity = self.matcher().identity(question.name)
        if identity is None:
            return self._ignore("no domain")
        out = []
        for record in msg.answers:
            if record.rtype in (dnswire.TYPE_A, dnswire.TYPE_AAAA) and isinstance(record.data, str):
                out.append(Learned(ep_id, record.data, identity, max(record.ttl, MIN_HOLD), question.name))
        return out

    def _expire(self, now: float) -> None:
        while self.pending:
            key, (_, deadline) = next(iter(self.pending.items()))
            if deadline > now:
                break
            del self.pending[key]
