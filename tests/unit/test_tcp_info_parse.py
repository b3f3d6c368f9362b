"""Parsing the TCP_INFO counters the lab tests use to count lost segments."""

from __future__ import annotations

import struct

import pytest

from tests.support.tcpstats import DSACK_DUPS_OFFSET, TCP_INFO_LEN, TOTAL_RETRANS_OFFSET, parse_tcp_info


def info(total: int, dups: int) -> bytes:
    buf = bytearray(232)  # sizeof(struct tcp_info) on Linux 6.x
    struct.pack_into("I", buf, TOTAL_RETRANS_OFFSET, total)
    struct.pack_into("I", buf, DSACK_DUPS_OFFSET, dups)
    return bytes(buf)


def test_retransmissions_the_peer_reported_as_duplicates_are_not_lost() -> None:
    r = parse_tcp_info(info(3, 2))
    assert (r.total, r.duplicates, r.lost) == (3, 2, 1)


def test_more_duplicates_than_retransmissions_never_makes_a_negative_loss() -> None:
    # one retransmitted GSO segment can be reported as several duplicate segments
    assert parse_tcp_info(info(1, 3)).lost == 0


def test_a_tcp_info_too_short_for_the_dsack_counter_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="tcpi_dsack_dups"):
        parse_tcp_info(info(0, 0)[: TCP_INFO_LEN - 1])
