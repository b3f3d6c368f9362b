"""The SCTP packets the lab builds for its raw-socket responders and probes."""

from __future__ import annotations

import struct

from controller.lab import sctp


def test_crc32c_matches_the_standard_check_values() -> None:
    assert sctp.crc32c(b"123456789") == 0xE3069283
    assert sctp.crc32c(bytes(32)) == 0x8A9136AA


def test_an_init_parses_back_with_its_ports_and_initiate_tag() -> None:
    parsed = sctp.parse(sctp.init(40000, 80, 0x1234ABCD))
    assert parsed is not None
    assert (parsed.sport, parsed.dport, parsed.vtag) == (40000, 80, 0)
    assert parsed.chunk_type == sctp.CHUNK_INIT
    assert parsed.initiate_tag == 0x1234ABCD


def test_an_init_ack_answers_with_the_init_tag_as_verification_tag() -> None:
    request = sctp.parse(sctp.init(40000, 80, 77))
    assert request is not None
    reply = sctp.parse(sctp.init_ack(request))
    assert reply is not None
    assert (reply.sport, reply.dport, reply.vtag) == (80, 40000, 77)
    assert reply.chunk_type == sctp.CHUNK_INIT_ACK
    assert reply.initiate_tag != 0


def test_an_init_ack_carries_a_state_cookie_parameter() -> None:
    request = sctp.parse(sctp.init(1, 2, 3))
    assert request is not None
    data = sctp.init_ack(request)
    param_type, param_len = struct.unpack_from("!HH", data, 12 + 4 + 16)
    assert param_type == sctp.PARAM_STATE_COOKIE
    assert param_len > 4
    assert len(data) % 4 == 0


def test_a_corrupted_packet_is_rejected_by_its_checksum() -> None:
    data = bytearray(sctp.init(1, 2, 3))
    data[-1] ^= 0xFF
    assert sctp.parse(bytes(data)) is None


def test_an_abort_for_an_init_carries_the_init_tag() -> None:
    request = sctp.parse(sctp.init(5, 6, 99))
    assert request is not None
    abort = sctp.parse(sctp.abort_for_init(request))
    assert abort is not None
    assert (abort.chunk_type, abort.vtag, abort.chunk_flags) == (sctp.CHUNK_ABORT, 99, 0)


def test_the_ipv4_header_is_stripped_by_its_length_field() -> None:
    header = bytes([0x46]) + bytes(11) + bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 2]) + bytes(4)
    result = sctp.strip_ipv4_header(header + b"payload")
    assert result == (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), b"payload")
