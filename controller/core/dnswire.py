"""The DNS wire format (RFC 1035), the parts vethguard reads and writes: queries, and answers
with A, AAAA and CNAME records (other record types are kept as raw data).

decode() never trusts its input: every read is bounds-checked, compression pointers must point
backwards (so they cannot loop) and a name is at most 255 octets; anything else raises
DnsWireError naming what is wrong. encode_*() write names uncompressed.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
CLASS_IN = 1
FLAG_QR = 0x8000  # a response
FLAG_TC = 0x0200  # truncated: ask again over TCP
FLAG_RD = 0x0100
FLAG_RA = 0x0080
RCODE_MASK = 0x000F
HEADER = struct.Struct("!HHHHHH")
NAME_WIRE_MAX = 255
_POINTER = 0xC0


class DnsWireError(ValueError):
    """A message that is not well-formed DNS."""


@dataclass(frozen=True)
class Question:
    name: str  # canonical: lower case, no trailing dot
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True)
class Record:
    name: str
    rtype: int
    ttl: int
    data: str | bytes  # A/AAAA: the address; CNAME: the target name; others: raw rdata
    rclass: int = CLASS_IN


@dataclass(frozen=True)
class Message:
    id: int
    flags: int
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authority: int = 0  # counts only: vethguard never reads those sections
    additional: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def rcode(self) -> int:
        return self.flags & RCODE_MASK


# --- encoding ------------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.lower().removesuffix(".").split(".") if name not in ("", ".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise DnsWireError(f"name {name!r}: label {label!r} must be 1-63 octets")
        out += bytes((len(raw),)) + raw
    out.append(0)
    if len(out) > NAME_WIRE_MAX:
        raise DnsWireError(f"name {name!r} is longer than {NAME_WIRE_MAX} octets")
    return bytes(out)


def _rdata(record: Record) -> bytes:
    if record.rtype in (TYPE_A, TYPE_AAAA):
        address = ipaddress.ip_address(str(record.data))
        if (address.version == 4) != (record.rtype == TYPE_A):
            raise DnsWireError(f"record {record.name}: {address} is not an address of its type")
        return address.packed
    if record.rtype == TYPE_CNAME:
        return encode_name(str(record.data))
    return record.data if isinstance(record.data, bytes) else record.data.encode()


def encode_record(record: Record) -> bytes:
    data = _rdata(record)
    return (
        encode_name(record.name)
        + struct.pack("!HHIH", record.rtype, record.rclass, record.ttl, len(data))
        + data
    )


def encode_query(qid: int, name: str, qtype: int = TYPE_A) -> bytes:
    return HEADER.pack(qid, FLAG_RD, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def encode_response(
    qid: int, question: Question, answers: list[Record] | tuple[Record, ...], rcode: int = 0, flags: int = 0
) -> bytes:
    head = HEADER.pack(qid, FLAG_QR | FLAG_RD | FLAG_RA | flags | rcode, 1, len(answers), 0, 0)
    body = encode_name(question.name) + struct.pack("!HH", question.qtype, question.qclass)
    return head + body + b"".join(encode_record(r) for r in answers)


def tcp_frame(message: bytes) -> bytes:
    """A message as sent over TCP: prefixed with its length (RFC 1035 4.2.2)."""
    return struct.pack("!H", len(message)) + message


# --- decoding ------------------------------------------------------------------------------


def decode_name(data: bytes, offset: int) -> tuple[str, int]:
    """(canonical name, offset after it in the message) of the name at `offset`."""
    labels: list[str] = []
    end = -1  # where the name ends in the message (after the first pointer, if any)
    wire = 0
    pos = offset
    while True:
        if pos >= len(data):
            raise DnsWireError(f"name at {offset}: runs past the end of the message")
        length = data[pos]
        if length & _POINTER == _POINTER:
            if pos + 1 >= len(data):
                raise DnsWireError(f"name at {offset}: truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= pos:  # only backwards: a pointer cannot loop
                raise DnsWireError(f"name at {offset}: compression pointer {target} does not point back")
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if length & _POINTER:
            raise DnsWireError(f"name at {offset}: unknown label type 0x{length & _POINTER:02x}")
        wire += length + 1
        if wire > NAME_WIRE_MAX:
            raise DnsWireError(f"name at {offset}: longer than {NAME_WIRE_MAX} octets")
        if length == 0:
            return ".".join(labels), (end if end >= 0 else pos + 1)
        if pos + 1 + length > len(data):
            raise DnsWireError(f"name at {offset}: label runs past the end of the message")
        labels.append(data[pos + 1 : pos + 1 + length].decode("ascii", "replace").lower())
        pos += 1 + length


def _record(data: bytes, offset: int) -> tuple[Record, int]:
    name, pos = decode_name(data, offset)
    if pos + 10 > len(data):
        raise DnsWireError(f"record {name or '.'}: truncated header")
    rtype, rclass, ttl, length = struct.unpack_from("!HHIH", data, pos)
    pos += 10
    if pos + length > len(data):
        raise DnsWireError(f"record {name or '.'}: data runs past the end of the message")
    raw = data[pos : pos + length]
    value: str | bytes = raw
    if rclass == CLASS_IN and rtype in (TYPE_A, TYPE_AAAA):
        if len(raw) != (4 if rtype == TYPE_A else 16):
            raise DnsWireError(f"record {name}: {len(raw)}-octet address for type {rtype}")
        value = str(ipaddress.ip_address(raw))
    elif rtype == TYPE_CNAME:
        value, after = decode_name(data, pos)
        if after != pos + length:
            raise DnsWireError(f"record {name}: CNAME data length {length} does not hold its name")
    return Record(name, rtype, ttl, value, rclass), pos + length


def decode(data: bytes) -> Message:
    """The header, questions and answer records of a message (authority and additional records
    are counted, not read)."""
    if len(data) < HEADER.size:
        raise DnsWireError(f"message of {len(data)} octets is shorter than the 12-octet header")
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    pos = HEADER.size
    questions = []
    for _ in range(qd):
        name, pos = decode_name(data, pos)
        if pos + 4 > len(data):
            raise DnsWireError("question: truncated type and class")
        qtype, qclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        questions.append(Question(name, qtype, qclass))
    answers = []
    for _ in range(an):
        record, pos = _record(data, pos)
        answers.append(record)
    return Message(qid, flags, tuple(questions), tuple(answers), ns, ar)
