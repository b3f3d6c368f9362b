"""Connectivity probes between lab namespaces: TCP handshake, UDP echo, SCTP INIT -> INIT-ACK.

Each probe runs on its own thread that first enters the source's network namespace, so all
sources and destinations are tried in parallel. Destinations are only ever addresses of the
lab's own pods and external hosts.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from controller.lab import netns, sctp

RETRY_INTERVAL = 0.25


@dataclass(frozen=True)
class Target:
    name: str  # "ns/pod" or "ext/NAME"
    netns: str
    addresses: tuple[str, ...]

    def address(self, family: int) -> str | None:
        for address in self.addresses:
            if (":" in address) == (family == 6):
                return address
        return None


@dataclass(frozen=True)
class Result:
    source: str
    destination: str
    connected: bool


def _af(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def probe_tcp(address: str, port: int, timeout: float) -> bool:
    with socket.socket(_af(address), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except OSError:
            return False
        return True


def probe_udp(address: str, port: int, timeout: float) -> bool:
    nonce = os.urandom(12)
    deadline = time.monotonic() + timeout
    with socket.socket(_af(address), socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, port))
        except OSError:
            return False
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                sock.send(nonce)
            except OSError:
                return False  # an ICMP error from the previous attempt: nothing listens
            ready, _, _ = select.select([sock], [], [], min(RETRY_INTERVAL, remaining))
            if not ready:
                continue
            try:
                if sock.recv(65535) == nonce:
                    return True
            except OSError:
                return False
    return False


def _is_answer(data: bytes, family: socket.AddressFamily, dport: int, sport: int, tag: int) -> bool | None:
    """True for our INIT-ACK, False for our ABORT, None for anything else."""
    if family == socket.AF_INET:
        split = sctp.strip_ipv4_header(data)
        if split is None:
            return None
        data = split[2]
    parsed = sctp.parse(data)
    if parsed is None or (parsed.sport, parsed.dport, parsed.vtag) != (dport, sport, tag):
        return None
    if parsed.chunk_type == sctp.CHUNK_INIT_ACK:
        return True
    if parsed.chunk_type == sctp.CHUNK_ABORT:
        return False
    return None


def probe_sctp(address: str, port: int, timeout: float) -> bool:
    family = _af(address)
    tag = sctp.random_tag()
    sport = 32768 + int.from_bytes(os.urandom(2), "big") % 28000
    request = sctp.init(sport, port, tag)
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_RAW, sctp.IPPROTO_SCTP) as sock:
        next_send = 0.0
        while (remaining := deadline - time.monotonic()) > 0:
            if time.monotonic() >= next_send:
                with contextlib.suppress(OSError):
                    sock.sendto(request, (address, 0))
                next_send = time.monotonic() + RETRY_INTERVAL
            ready, _, _ = select.select([sock], [], [], min(RETRY_INTERVAL, remaining))
            if not ready:
                continue
            data, source = sock.recvfrom(65535)
            if source[0] != address:
                continue
            answer = _is_answer(data, family, port, sport, tag)
            if answer is not None:
                return answer
    return False


PROBES = {"TCP": probe_tcp, "UDP": probe_udp, "SCTP": probe_sctp}


def _one(
    source: Target, destination: Target, protocol: str, port: int, family: int, timeout: float
) -> Result:
    address = destination.address(family)
    if address is None:
        return Result(source.name, destination.name, False)
    netns.enter(source.netns)  # every task enters its own source first: pooled threads are safe
    connected = PROBES[protocol](address, port, timeout)
    return Result(source.name, destination.name, connected)


def run(
    sources: Sequence[Target],
    destinations: Sequence[Target],
    protocol: str,
    port: int,
    family: int = 4,
    timeout: float = 1.0,
) -> list[Result]:
    """Probe every source against every destination in parallel; results in (source, dest) order."""
    pairs = [(s, d) for s in sources for d in destinations]
    if not pairs:
        return []
    with ThreadPoolExecutor(max_workers=min(len(pairs), 256), thread_name_prefix="probe") as pool:
        futures = [pool.submit(_one, s, d, protocol, port, family, timeout) for s, d in pairs]
        return [f.result() for f in futures]


def matrix_text(
    results: Sequence[Result], sources: Sequence[str], destinations: Sequence[str], title: str
) -> str:
    """A kubectl-netpol-like reachability table: '.' connected, 'X' not."""
    cells = {(r.source, r.destination): "." if r.connected else "X" for r in results}
    width = max([len(title), *(len(s) for s in sources)])
    col = max([3, *(len(d) for d in destinations)])
    lines = [f"{title:<{width}}  " + " ".join(f"{d:<{col}}" for d in destinations).rstrip()]
    for source in sources:
        row = " ".join(f"{cells.get((source, d), '?'):<{col}}" for d in destinations)
        lines.append(f"{source:<{width}}  {row}".rstrip())
    return "\n".join(lines)
