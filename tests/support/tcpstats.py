"""TCP helpers of the lab tests: tell a lost segment from a spurious retransmission (the
sender's TCP_INFO), and read an exact number of bytes.

A retransmission alone does not prove a drop. On a loaded machine the sender's timers can fire
before an ACK that is merely late arrives: the tail loss probe fires after about 2 x RTT plus
200 ms when one segment is outstanding, and a delayed ACK may wait up to 200 ms. The receiver
then holds two copies of the segment, and it says so with a D-SACK (RFC 2883), which the sender
counts in tcpi_dsack_dups. A segment that was really dropped is retransmitted without a D-SACK.
So the segments lost are the retransmissions the receiver did not report as duplicates. (A
dropped pure ACK is not counted: the retransmission it causes reaches the receiver twice. The
lab tests send data both ways, so a drop in either direction still shows.)
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

# offsetof(struct tcp_info, ...) in <linux/tcp.h>; the struct only grows at its end
TOTAL_RETRANS_OFFSET = 100  # __u32 tcpi_total_retrans
DSACK_DUPS_OFFSET = 216  # __u32 tcpi_dsack_dups (Linux 5.10+)
TCP_INFO_LEN = DSACK_DUPS_OFFSET + 4


@dataclass(frozen=True)
class Retransmissions:
    total: int  # segments this socket retransmitted
    duplicates: int  # segments the peer reported (D-SACK) as already received

    @property
    def lost(self) -> int:
        """Retransmitted segments whose first copy never arrived: data the network dropped."""
        return max(0, self.total - self.duplicates)


def parse_tcp_info(info: bytes) -> Retransmissions:
    if len(info) < TCP_INFO_LEN:
        raise ValueError(
            f"TCP_INFO is {len(info)} bytes; tcpi_dsack_dups needs {TCP_INFO_LEN} (a kernel before 5.10?)"
        )
    total = struct.unpack_from("I", info, TOTAL_RETRANS_OFFSET)[0]
    duplicates = struct.unpack_from("I", info, DSACK_DUPS_OFFSET)[0]
    return Retransmissions(total=int(total), duplicates=int(duplicates))


def retransmissions(sock: socket.socket) -> Retransmissions:
    return parse_tcp_info(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes from a stream socket; ConnectionError if the peer closes first."""
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the peer")
        buf += chunk
    return buf
