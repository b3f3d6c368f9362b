"""Who is at the other end of a TCP connection made on this machine: the uid the kernel records
for the client's socket in /proc/net/tcp and tcp6 (TCP carries no SO_PEERCRED; this is what
identd does). The lab serves pods/exec (a root command in a node's namespace) on its 127.0.0.1
port only to root, and a local connection's client socket is in the same network namespace as
the listener, so its row is there."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path


def _address(field: str) -> tuple[str, int]:
    """'0100007F:1F90' (IPv4) or 32 hex digits and a port (IPv6) -> (address, port). The kernel
    prints each 32-bit word of the address as a host-order number."""
    text, port = field.split(":")
    words = [int(text[i : i + 8], 16) for i in range(0, len(text), 8)]
    raw = b"".join(struct.pack("=I", w) for w in words)
    if len(raw) == 4:
        return socket.inet_ntoa(raw), int(port, 16)
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped or addr), int(port, 16)


def tcp_peer_uid(
    client: tuple[str, int], server: tuple[str, int], proc_net: Path = Path("/proc/self/net")
) -> int | None:
    """The uid owning the socket `client` that is connected to `server`; None when none is
    listed (a client in another network namespace or on another machine)."""
    want = ((client[0], int(client[1])), (server[0], int(server[1])))
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc_net / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                if (_address(fields[1]), _address(fields[2])) == want:
                    return int(fields[7])
            except ValueError:
                continue
    return None
