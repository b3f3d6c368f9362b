"""The lab tests' TCP loss measure tells a dropped segment from a late ACK, on real sockets.

Two namespaces joined by a veth carry one TCP connection. An iptables rule in one of them drops,
for a moment, as they arrive, either the client's data (a real loss) or the server's ACK of data
that did arrive
(which makes the client retransmit a segment the server already has). Only the first counts as
lost: that is what test_restarts and test_revocation assert is zero. (A missing ACK looks the
same to the sender whether it was dropped or is only late, as on a loaded machine.)
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.netns_util import VethPair, in_netns, veth_pair
from tests.support.tcpstats import Retransmissions, recv_exact, retransmissions

pytestmark = [
    pytest.mark.root,
]

PORT = 9411
SETTLE = 1.0  # long enough for a 200 ms retransmission timer, its retransmit and the reply
# The rule that drops the server's ACK must be gone before the client's first retransmission
# (tail loss probe, >= 200 ms after sending). If removing it took longer, the attempt says
# nothing and is repeated.
ACK_RULE_DEADLINE = 0.15
ATTEMPTS = 3


@contextmanager
def connection(v: VethPair) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client in the pod namespace, server end in the node namespace), both blocking."""

    def listen() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((v.node_ip, PORT))
        s.listen(1)
        return s

    listener = in_netns(v.node_ns, listen)
    client = in_netns(v.pod_ns, lambda: socket.create_connection((v.node_ip, PORT), timeout=5))
    server, _ = listener.accept()
    listener.close()
    server.settimeout(5)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def iptables(ns: str, action: str, *rule: str) -> None:
    """Rules go on INPUT: a packet dropped on arrival is lost in the network for its sender (a
    local OUTPUT drop is reported back to TCP, which then neither counts nor retransmits it)."""
    subprocess.run(["ip", "netns", "exec", ns, "iptables", action, "INPUT", *rule], check=True)


def test_a_data_segment_dropped_on_the_way_counts_as_lost() -> None:
    with veth_pair() as v, connection(v) as (client, server):
        # data segments only: a pure ACK is 52 bytes (20 IP + 20 TCP + 12 timestamps)
        rule = ("-p", "tcp", "--dport", str(PORT), "-m", "length", "--length", "53:65535", "-j", "DROP")
        iptables(v.node_ns, "-A", *rule)
        client.sendall(b"12345678")
        time.sleep(0.1)  # the first copy is gone
        iptables(v.node_ns, "-D", *rule)
        assert recv_exact(server, 8) == b"12345678"  # the retransmission delivered it
        time.sleep(SETTLE)
        r = retransmissions(client)
        print(f"\ndropped data: {r}")
        assert r.total >= 1 and r.duplicates == 0 and r.lost == r.total


def test_a_segment_that_arrived_but_was_resent_for_want_of_an_ack_is_not_lost() -> None:
    seen: list[tuple[Retransmissions, float]] = []
    for _ in range(ATTEMPTS):
        with veth_pair() as v, connection(v) as (client, server):
            rule = ("-p", "tcp", "--sport", str(PORT), "-j", "DROP")
            iptables(v.pod_ns, "-A", *rule)
            sent = time.monotonic()
            client.sendall(b"12345678")
            # The server has the data and has answered with an ACK the rule dropped (a quick
            # ACK leaves in the softirq that queued the data, before recv returns).
            assert recv_exact(server, 8) == b"12345678"
            iptables(v.pod_ns, "-D", *rule)
            removed_after = time.monotonic() - sent
            time.sleep(SETTLE)
            r = retransmissions(client)
            seen.append((r, removed_after))
            if removed_after < ACK_RULE_DEADLINE and r.total >= 1:
                break
    print(f"\nmissing ACK attempts (retransmissions, rule removed after s): {seen}")
    r, removed_after = seen[-1]
    assert removed_after < ACK_RULE_DEADLINE and r.total >= 1, seen
    assert r.duplicates == r.total and r.lost == 0, seen
