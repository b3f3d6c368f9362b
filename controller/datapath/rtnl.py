"""A minimal rtnetlink client: dumps of links, routes and neighbours, and acknowledged requests.

pyroute2 decodes every attribute of every message through its generic NLA machinery: a dump of
23 links and 68 routes costs ~45 ms of CPU, once per agent pass, and a tc attach ~7 ms. The agent
needs a handful of attributes, so this module reads them straight from the bytes (~1 ms for the
same dumps) and builds the few requests it sends (clsact, bpf filters) by hand.

One socket per `Rtnl` object, opened in the network namespace of the thread that creates it;
not thread-safe (each user keeps its own, or opens one per call: opening costs ~20 us). The
netlink watch of the agent (controller.agent.linkwatch) reads its multicast messages the same way.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 1 << 15
NLA_TYPE_MASK = 0x3FFF
SO_RCVBUFFORCE = 33

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30
RTM_NEWQDISC = 36
RTM_NEWTFILTER = 44

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RTATTR = struct.Struct("=HH")  # len, type
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info

# multicast groups (linux/rtnetlink.h RTMGRP_*)
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400

_RECV_BUFFER = 1 << 18
_EVENT_SOCKET_BUFFER = 4 << 20  # a burst of pods is a few hundred messages of < 2 KiB


def header_size(msg_type: int) -> int:
    """Size of the fixed header of a link, route or neighbour message (0 for other types)."""
    if msg_type in (RTM_NEWLINK, RTM_DELLINK):
        return IFINFOMSG.size
    if msg_type in (RTM_NEWROUTE, RTM_DELROUTE):
        return RTMSG.size
    if msg_type in (RTM_NEWNEIGH, RTM_DELNEIGH):
        return NDMSG.size
    return 0


class NetlinkError(OSError):
    """The kernel refused a request: `code` is the positive errno."""

    def __init__(self, code: int, what: str = "") -> None:
        super().__init__(code, f"{what}: {os.strerror(code)}" if what else os.strerror(code))
        self.code = code


@dataclass(frozen=True)
class Message:
    """One netlink message: its type, the fixed header's bytes and its attributes' bytes."""

    type: int
    header: bytes
    attrs: bytes

    def attributes(self) -> dict[int, bytes]:
        return parse_attrs(self.attrs)


def parse_attrs(data: bytes | memoryview, offset: int = 0) -> dict[int, bytes]:
    """type -> payload of the attributes in `data[offset:]` (the last one wins on repeats)."""
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = bytes(data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return out


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    raw = _RTATTR.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def asciiz(text: str) -> bytes:
    return text.encode() + b"\0"


def as_u32(payload: bytes | None) -> int | None:
    return struct.unpack_from("=I", payload)[0] if payload is not None and len(payload) >= 4 else None


def as_str(payload: bytes | None) -> str | None:
    return payload.split(b"\0", 1)[0].decode(errors="replace") if payload is not None else None


def as_ip(payload: bytes | None) -> str | None:
    if payload is None:
        return None
    if len(payload) == 4:
        return socket.inet_ntop(socket.AF_INET, payload)
    if len(payload) == 16:
        return socket.inet_ntop(socket.AF_INET6, payload)
    return None


def as_mac(payload: bytes | None) -> str | None:
    return ":".join(f"{b:02x}" for b in payload) if payload else None


class Rtnl:
    """A NETLINK_ROUTE socket of the current network namespace; with `groups`, also a member of
    those multicast groups (read their messages with `events`)."""

    def __init__(self, groups: int = 0) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            size = _EVENT_SOCKET_BUFFER if groups else 1 << 20
            try:  # beyond net.core.rmem_max (needs CAP_NET_ADMIN)
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            except OSError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            self._sock.bind((0, groups))
        except OSError:
            self._sock.close()
            raise
        self._seq = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def events(self, timeout: float) -> list[Message]:
        """The multicast messages of one read, waiting up to `timeout` seconds ([] if none came).
        Raises OSError(ENOBUFS) when the kernel dropped messages because the socket was full."""
        readable, _, _ = select.select([self._sock], [], [], timeout)
        if not readable:
            return []
        data = memoryview(self._sock.recv(_RECV_BUFFER))
        out: list[Message] = []
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                break
            size = header_size(kind)
            payload = data[offset + _NLMSGHDR.size : offset + length]
            offset += (length + 3) & ~3
            if size and len(payload) >= size:
                out.append(Message(kind, bytes(payload[:size]), bytes(payload[size:])))
        return out

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg_type: int, flags: int, body: bytes) -> int:
        self._seq += 1
        self._sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, self._seq, 0) + body)
        return self._seq

    def _replies(self, seq: int) -> Iterator[tuple[int, int, memoryview]]:
        """(type, flags, payload) of the replies to `seq` until DONE, an error/ack, or a
        message that is not part of a multipart answer."""
        while True:
            data = memoryview(self._sock.recv(_RECV_BUFFER))
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, flags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    return
                payload = data[offset + _NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue  # a late answer to an earlier request
                yield kind, flags, payload
                if kind in (NLMSG_DONE, NLMSG_ERROR) or not flags & NLM_F_MULTI:
                    return

    def dump(self, msg_type: int, header: bytes, header_size: int, what: str = "dump") -> list[Message]:
        """Every message of a dump request (`header`: the family-specific request header)."""
        seq = self._send(msg_type, NLM_F_REQUEST | NLM_F_DUMP, header)
        out: list[Message] = []
        for kind, _flags, payload in self._replies(seq):
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    raise NetlinkError(code, what)
                break
            if kind == NLMSG_DONE:
                break
            out.append(Message(kind, bytes(payload[:header_size]), bytes(payload[header_size:])))
        return out

    def request(self, msg_type: int, flags: int, body: bytes, what: str = "request") -> None:
        """Send one request with NLM_F_ACK; raise NetlinkError unless the kernel acknowledged it."""
        seq = self._send(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, body)
        for kind, _flags, payload in self._replies(seq):
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", payload)[0]
                if code:
                    raise NetlinkError(code, what)
                return
        raise NetlinkError(errno.EPROTO, f"{what}: no acknowledgement")

    # ---- the dumps discovery needs

    def links(self) -> list[Message]:
        return self.dump(RTM_GETLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), IFINFOMSG.size, "links")

    def routes(self, family: int) -> list[Message]:
        return self.dump(RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), RTMSG.size, "routes")

    def neighbours(self, family: int) -> list[Message]:
        return self.dump(RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0), NDMSG.size, "neighbours")
