"""Releasing a held DNS answer into its pod (bpf/lib/dns.h): the frame is sent out of the pod's
host-side veth through a packet socket, marked VG_MARK_DNS_RELEASED so to_pod lets it through
and judges it as the reply it is.

The held copy is the frame as tc saw it: a checksum the kernel would have completed later
(CHECKSUM_PARTIAL) is only the pseudo-header's sum there, so the UDP/TCP checksum is computed
again. A frame longer than the veth's MTU (a TCP answer the stack handed over as one GSO
segment) goes with a virtio-net header asking the kernel to segment it and complete the
checksums (PACKET_VNET_HDR), as a tap device's writer would.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from controller.datapath import abi

SOL_PACKET = 263
PACKET_VNET_HDR = 15
SIOCGIFNAME, SIOCGIFMTU = 0x8910, 0x8921
ETH_HLEN = 14
_VNET = struct.Struct(
    "=BBHHHH"
)  # struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6 = 0, 1, 4
_CSUM_OFFSET = {17: 6, 6: 16}  # UDP, TCP: where the checksum sits in the header


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _layout(frame: bytes) -> tuple[int, int, int]:
    """(L4 protocol, L4 offset, offset past the IP datagram) of an IPv4/IPv6 frame."""
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == 0x0800:
        ihl = (frame[ETH_HLEN] & 0x0F) * 4
        (total,) = struct.unpack_from("!H", frame, ETH_HLEN + 2)
        return frame[ETH_HLEN + 9], ETH_HLEN + ihl, ETH_HLEN + total
    if ethertype == 0x86DD:
        (plen,) = struct.unpack_from("!H", frame, ETH_HLEN + 4)
        return frame[ETH_HLEN + 6], ETH_HLEN + 40, ETH_HLEN + 40 + plen
    raise ValueError(f"ethertype 0x{ethertype:04x} is not IP")


def _pseudo_header(frame: bytes, proto: int, length: int) -> bytes:
    if frame[12:14] == b"\x08\x00":
        return frame[ETH_HLEN + 12 : ETH_HLEN + 20] + bytes((0, proto)) + struct.pack("!H", length)
    return frame[ETH_HLEN + 8 : ETH_HLEN + 40] + struct.pack("!I", length) + bytes((0, 0, 0, proto))


def _with_field(frame: bytes, at: int, value: int) -> bytes:
    out = bytearray(frame)
    out[at : at + 2] = struct.pack("!H", value)
    return bytes(out)


def with_checksum(frame: bytes) -> bytes:
    """`frame` with its UDP or TCP checksum computed whole."""
    proto, l4, end = _layout(frame)
    at = l4 + _CSUM_OFFSET[proto]
    zeroed = _with_field(frame, at, 0)
    csum = ~_sum16(_pseudo_header(frame, proto, end - l4) + zeroed[l4:end]) & 0xFFFF
    if proto == 17 and csum == 0:
        csum = 0xFFFF  # (UDP: 0 means "no checksum")
    return _with_field(frame, at, csum)


def partial_checksum(frame: bytes) -> bytes:
    """`frame` with its checksum field holding the pseudo-header's sum: what a virtio-net
    header's NEEDS_CSUM asks the kernel to complete."""
    proto, l4, end = _layout(frame)
    return _with_field(frame, l4 + _CSUM_OFFSET[proto], _sum16(_pseudo_header(frame, proto, end - l4)))


def gso_header(frame: bytes, mtu: int) -> bytes:
    """The virtio-net header that sends `frame` (TCP, longer than `mtu`) as segments of the MTU,
    the checksums completed by the kernel (see partial_checksum)."""
    proto, l4, _ = _layout(frame)
    if proto != 6:
        raise ValueError("only a TCP frame can be longer than the MTU")
    hdr_len = l4 + (frame[l4 + 12] >> 4) * 4
    gso = GSO_TCPV4 if frame[12:14] == b"\x08\x00" else GSO_TCPV6
    return _VNET.pack(VNET_F_NEEDS_CSUM, gso, hdr_len, mtu - (hdr_len - ETH_HLEN), l4, _CSUM_OFFSET[proto])


class Releaser:
    """One packet socket (with a virtio-net header on every frame) that sends held answers out
    of any interface, marked as released. Needs CAP_NET_RAW and CAP_NET_ADMIN (the mark)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, abi.VG_MARK_DNS_RELEASED)
        self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        self._ifaces: dict[int, tuple[str, int]] = {}

    def _interface(self, ifindex: int) -> tuple[str, int]:
        """(name, MTU) of `ifindex` in the socket's network namespace (ioctls on the socket, not
        sysfs or the caller's namespace)."""
        got = self._ifaces.get(ifindex)
        if got is None:
            req = fcntl.ioctl(self.sock, SIOCGIFNAME, struct.pack("16si", b"", ifindex) + bytes(20))
            name = req[:16].split(b"\0", 1)[0].decode()
            req = fcntl.ioctl(self.sock, SIOCGIFMTU, struct.pack("16si", name.encode(), 0) + bytes(20))
            got = self._ifaces[ifindex] = (name, struct.unpack_from("i", req, 16)[0])
        return got

    def release(self, ifindex: int, frame: bytes) -> None:
        """Send `frame` out of interface `ifindex` (the pod's host-side veth) into its pod."""
        name, mtu = self._interface(ifindex)
        if len(frame) - ETH_HLEN > mtu:
            data = gso_header(frame, mtu) + partial_checksum(frame)
        else:
            data = _VNET.pack(0, GSO_NONE, 0, 0, 0, 0) + with_checksum(frame)
        self.sock.sendto(data, (name, 0))

    def forget(self, ifindex: int) -> None:
        """The interface went away (its index may name another one later)."""
        self._ifaces.pop(ifindex, None)

    def close(self) -> None:
        self.sock.close()
