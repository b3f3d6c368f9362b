"""Just enough SCTP (RFC 9260) to answer and probe an association setup with raw sockets.

The kernel here has no SCTP module, so the lab answers an INIT with an INIT-ACK itself (or an
ABORT when no one listens on the port), over raw IPPROTO_SCTP sockets. A probe counts as
connected when its INIT gets an INIT-ACK carrying its own initiate tag.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

IPPROTO_SCTP = 132
CHUNK_INIT = 1
CHUNK_INIT_ACK = 2
CHUNK_ABORT = 6
PARAM_STATE_COOKIE = 7
COMMON_HEADER = struct.Struct("!HHII")  # source port, destination port, verification tag, checksum
INIT_FIXED = struct.Struct("!IIHHI")  # initiate tag, a_rwnd, outbound streams, inbound streams, TSN


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def chunk(chunk_type: int, flags: int, value: bytes) -> bytes:
    return _pad4(struct.pack("!BBH", chunk_type, flags, 4 + len(value)) + value)


def packet(sport: int, dport: int, vtag: int, chunks: list[bytes]) -> bytes:
    """A complete SCTP packet with its CRC32c (stored little-endian, as Linux does)."""
    body = b"".join(chunks)
    unsummed = COMMON_HEADER.pack(sport, dport, vtag, 0) + body
    return unsummed[:8] + struct.pack("<I", crc32c(unsummed)) + body


def checksum_ok(data: bytes) -> bool:
    if len(data) < COMMON_HEADER.size:
        return False
    (stored,) = struct.unpack("<I", data[8:12])
    return crc32c(data[:8] + b"\0\0\0\0" + data[12:]) == stored


@dataclass(frozen=True)
class Parsed:
    sport: int
    dport: int
    vtag: int
    chunk_type: int  # the first chunk's type
    chunk_flags: int
    initiate_tag: int  # INIT / INIT-ACK only, else 0


def parse(data: bytes) -> Parsed | None:
    """The common header and first chunk of an SCTP packet; None if malformed or bad checksum."""
    if len(data) < COMMON_HEADER.size + 4 or not checksum_ok(data):
        return None
    sport, dport, vtag, _ = COMMON_HEADER.unpack_from(data)
    chunk_type, flags, length = struct.unpack_from("!BBH", data, COMMON_HEADER.size)
    initiate_tag = 0
    if chunk_type in (CHUNK_INIT, CHUNK_INIT_ACK):
        if length < 4 + INIT_FIXED.size or len(data) < COMMON_HEADER.size + 4 + INIT_FIXED.size:
            return None
        (initiate_tag,) = struct.unpack_from("!I", data, COMMON_HEADER.size + 4)
    return Parsed(sport, dport, vtag, chunk_type, flags, initiate_tag)


def random_tag() -> int:
    return int.from_bytes(os.urandom(4), "big") or 1


def init(sport: int, dport: int, initiate_tag: int) -> bytes:
    fixed = INIT_FIXED.pack(initiate_tag, 65535, 10, 10, random_tag())
    return packet(sport, dport, 0, [chunk(CHUNK_INIT, 0, fixed)])


def init_ack(request: Parsed) -> bytes:
    """The INIT-ACK answering an INIT: verification tag = the INIT's initiate tag, with a cookie."""
    cookie = struct.pack("!IHH", request.initiate_tag, request.sport, request.dport) + os.urandom(16)
    param = _pad4(struct.pack("!HH", PARAM_STATE_COOKIE, 4 + len(cookie)) + cookie)
    fixed = INIT_FIXED.pack(random_tag(), 65535, 10, 10, random_tag())
    return packet(
        request.dport, request.sport, request.initiate_tag, [chunk(CHUNK_INIT_ACK, 0, fixed + param)]
    )


def abort_for_init(request: Parsed) -> bytes:
    """The ABORT an endpoint without a listener sends for an INIT (T bit clear, tag from the INIT)."""
    return packet(request.dport, request.sport, request.initiate_tag, [chunk(CHUNK_ABORT, 0, b"")])


def strip_ipv4_header(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(source, destination, SCTP payload) of an IPv4 datagram read from a raw socket."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    header_len = (data[0] & 0x0F) * 4
    return data[12:16], data[16:20], data[header_len:]
