"""A policy change stops the established flows it denies within a second, in both directions,
and does not interrupt the flows it keeps.

A two-node lab: `x/server` (node-1) is isolated for ingress and accepts, from pods labelled
role=keep or role=gone, TCP 9010/9020 and UDP 9011/9021 (its egress is open). `x/keep` (node-2,
cross-node) and `x/gone` (node-1, same node) each hold one TCP connection and one UDP flow to the
server (keep: 9010 + 9011, gone: 9020 + 9021). On all eight ends a pump sends 8 bytes every 20 ms
and timestamps every arrival, so each direction of each flow is observed separately. Then
`vethguard lab apply` replaces the policy with one that allows only role=keep.

Measured and asserted, from the moment `lab apply` returned (every agent has realized it):
  - the gone flows' last arrival, at the server (client -> server) and at the client
    (server -> client), for TCP and UDP: within REVOKE_LIMIT (1 s); they were alive right
    before the apply started (non-vacuous), and the server's hooks counted DROP_REVOKED in both
    directions;
  - the keep flows: no gap between arrivals longer than GAP_LIMIT around the update, arrivals
    continue after it, and no lost TCP segment on either end (tests/support/tcpstats.py).
The figures are printed (pytest -s).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS
from controller.datapath.abi import CounterKey, CounterValue, Reason
from controller.datapath.bpfsys import BpfMap
from controller.lab import netns
from controller.lab.state import LabPaths
from tests.support.labs import Lab
from tests.support.tcpstats import retransmissions

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
]

PERIOD = 0.02
REVOKE_LIMIT = 1.0
GAP_LIMIT = 0.5  # 25 periods: a retransmission timeout (>= 200 ms) would already show here
ALIVE_BEFORE = 0.5
AFTER = 2.5  # seconds of traffic observed after the apply returned
PORTS = {"keep": (9010, 9011), "gone": (9020, 9021)}
CLIENT_UDP_PORT = {"keep": 40011, "gone": 40021}

MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: server}}
spec:
  nodeName: node-1
  containers: [{name: s, ports: [{containerPort: 80, protocol: TCP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: keep, namespace: x, labels: {role: keep}}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{containerPort: 80, protocol: TCP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: gone, namespace: x, labels: {role: gone}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{containerPort: 80, protocol: TCP}]}]
"""
POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: server, namespace: x}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchExpressions: [{{key: role, operator: In, values: [{roles}]}}]}}}}]
    ports:
    - {{port: 9010}}
    - {{port: 9020}}
    - {{port: 9011, protocol: UDP}}
    - {{port: 9021, protocol: UDP}}
"""


@dataclass
class Pump:
    """One end of one flow: sends 8 bytes every PERIOD (a UDP server end only once it heard its
    client, so the flow is the client's), timestamps every arrival."""

    name: str
    sock: socket.socket
    wait_for_peer: bool = False
    arrivals: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        self.sock.setblocking(False)
        next_send = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                next_send = now + PERIOD
                if not (self.wait_for_peer and not self.arrivals):
                    with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                        self.sock.send(struct.pack("!d", now))
            if not select.select([self.sock], [], [], max(0.0, next_send - time.monotonic()))[0]:
                continue
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ConnectionRefusedError):
                continue
            except OSError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            if not data and self.sock.type == socket.SOCK_STREAM:
                self.errors.append("EOF")
                return
            self.arrivals.append(time.monotonic())

    def last_before(self, t: float) -> float | None:
        before = [a for a in self.arrivals if a <= t]
        return before[-1] if before else None

    def max_gap(self, start: float, end: float) -> float:
        window = [start, *[a for a in self.arrivals if start < a < end], end]
        return max(b - a for a, b in itertools.pairwise(window))


@dataclass
class Flows:
    pumps: dict[str, Pump]  # "<client>/<proto>/<end>", end = client | server
    stop: threading.Event
    threads: list[threading.Thread]

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        for p in self.pumps.values():
            with contextlib.suppress(OSError):
                p.sock.close()


def open_flows(status: dict[str, Any]) -> Flows:
    pods: dict[str, Any] = status["pods"]

    def ns(pod: str) -> str:
        return str(pods[pod]["netns"])

    def addr(pod: str, family: int) -> str:
        return next(str(ip) for ip in pods[pod]["ips"] if (":" in ip) == (family == 6))

    server4 = addr("x/server", 4)
    pumps: dict[str, Pump] = {}
    for client, (tcp_port, udp_port) in PORTS.items():

        def listen(port: int = tcp_port) -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((server4, port))
            s.listen(1)
            return s

        def udp_server(
            port: int = udp_port, peer: str = addr(f"x/{client}", 4), c: str = client
        ) -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((server4, port))
            s.connect((peer, CLIENT_UDP_PORT[c]))
            return s

        def tcp_client(port: int = tcp_port) -> socket.socket:
            s = socket.create_connection((server4, port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s

        def udp_client(port: int = udp_port, c: str = client) -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", CLIENT_UDP_PORT[c]))
            s.connect((server4, port))
            return s

        listener = netns.run_in_netns(ns("x/server"), listen)
        try:
            pumps[f"{client}/tcp/client"] = Pump(
                f"{client}/tcp/client", netns.run_in_netns(ns(f"x/{client}"), tcp_client)
            )
            listener.settimeout(5)
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pumps[f"{client}/tcp/server"] = Pump(f"{client}/tcp/server", conn)
        finally:
            listener.close()
        pumps[f"{client}/udp/server"] = Pump(
            f"{client}/udp/server",
            netns.run_in_netns(ns("x/server"), udp_server),
            wait_for_peer=True,
        )
        pumps[f"{client}/udp/client"] = Pump(
            f"{client}/udp/client", netns.run_in_netns(ns(f"x/{client}"), udp_client)
        )
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), name=p.name, daemon=True) for p in pumps.values()]
    for t in threads:
        t.start()
    return Flows(pumps, stop, threads)


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    lab = lab_factory("--nodes", "2", model=MODEL, agents=True)
    lab.cli("apply", "-f", "-", stdin=POLICY.format(roles="keep, gone"))
    return lab


def revoked_count(lab: Lab, node: str, ep: int, direction: int) -> int:
    m = BpfMap.open_pinned(str(LabPaths(lab.name).pin_root / node / "vg_counters"))
    try:
        key = CounterKey(ep_id=ep, reason=int(Reason.DROP_REVOKED), dir=direction).to_bytes()
        return sum(CounterValue.from_bytes(v).packets for v in m.lookup_percpu(key) or [])
    finally:
        m.close()


def server_ep(status: dict[str, Any]) -> int:
    pod_ns = str(status["pods"]["x/server"]["netns"])
    out = subprocess.run(
        ["ip", "-n", pod_ns, "-j", "link", "show", "eth0"], capture_output=True, text=True, check=True
    )
    (eth0,) = json.loads(out.stdout)
    return int(eth0["link_index"])


def test_a_policy_change_stops_revoked_flows_within_a_second_and_keeps_the_others(lab: Lab) -> None:
    status = lab.status()
    ep = server_ep(status)
    flows = open_flows(status)
    try:
        time.sleep(1.5)  # every flow is up and both ends of every flow are sending
        t_start = time.monotonic()
        lab.cli("apply", "-f", "-", stdin=POLICY.format(roles="keep"))
        t_applied = time.monotonic()
        time.sleep(AFTER)
        t_end = time.monotonic()
        retrans = {
            name: retransmissions(p.sock) for name, p in flows.pumps.items() if name.startswith("keep/tcp")
        }
    finally:
        flows.finish()

    pumps = flows.pumps
    print(f"\nlab apply took {t_applied - t_start:.3f} s")
    for name, p in sorted(pumps.items()):
        last = p.arrivals[-1] - t_applied if p.arrivals else float("nan")
        print(
            f"{name:18} arrivals {len(p.arrivals):4}  last arrival {last:+.3f} s after apply returned "
            f"({last + t_applied - t_start:+.3f} s after it started)  "
            f"max gap {p.max_gap(t_start - 1.0, t_end):.3f} s  errors {p.errors}"
        )
    for name, p in pumps.items():
        assert not p.errors, f"{name}: {p.errors}"
        # every end heard its peer right before the update: the flows were alive
        last_before = p.last_before(t_start)
        assert last_before is not None and t_start - last_before < ALIVE_BEFORE, f"{name} was not flowing"
    for name, p in pumps.items():
        if name.startswith("gone/"):
            stopped_after = p.arrivals[-1] - t_applied
            assert stopped_after < REVOKE_LIMIT, (
                f"{name}: still receiving {stopped_after:.3f} s after the apply"
            )
            assert p.arrivals[-1] < t_end - 1.0, f"{name}: still receiving at the end"
        else:
            assert p.max_gap(t_start - 1.0, t_end) < GAP_LIMIT, f"{name}: a gap in a flow that stays allowed"
            assert [a for a in p.arrivals if a > t_applied + 1.0], f"{name}: nothing after the update"
    lost = {name: r.lost for name, r in retrans.items() if r.lost}
    assert retrans and not lost, f"kept TCP connection lost segments: {lost} of {retrans}"
    assert revoked_count(lab, "node-1", ep, DIR_INGRESS) > 0  # gone -> server at the server's to_pod
    assert revoked_count(lab, "node-1", ep, DIR_EGRESS) > 0  # server -> gone at its from_pod
