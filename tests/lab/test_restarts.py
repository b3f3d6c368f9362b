"""Agents killed ten times and upgraded once while traffic flows: enforcement never stops.

A two-node lab with an isolating policy carries, for the whole test:
  - four long-lived TCP connections (two cross-node, two same-node) to an echo server, each doing
    an 8-byte round trip every 50 ms;
  - two UDP flows of sequence-numbered datagrams echoed by the lab's UDP responder;
  - an intruder in a denied namespace trying TCP connects and UDP datagrams every 200 ms;
  - TCP and UDP probe tables before, right after every kill (while the agent is down) and after.
Every kill is a SIGKILL of one agent (found through `vethguard lab status -o json`); the lab
daemon starts it again. The upgrade restarts both agents with a program built with
-DVG_UPGRADE_MARKER=2 (through the lab's agent.env), which must replace the program on every
veth while the pinned maps, conntrack included, stay.

Evidence asserted: no reset or EOF, no lost TCP segment on either end of any connection (a dropped
data segment is retransmitted without the peer reporting a duplicate, see tests/support/tcpstats.py; a
retransmission only because a loaded machine delayed an ACK is not a loss; both ends send data, so a
drop in either direction shows), no round trip slower than STALL_LIMIT (3 s), every UDP datagram echoed, no
intruder connection or echo, identical probe tables, an unchanged policy revision on both nodes (the
first sync after every restart changed nothing), the long-lived flows' conntrack entries still those
created by the first program, and new flows created by the upgraded one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.datapath import abi, bpfsys, codecs
from controller.datapath.tcx import pod_attacher
from controller.lab import netns, topology
from controller.lab.agents import AGENT_ENV_FILE, query_agent
from controller.lab.state import LabPaths
from tests.support.labs import Lab
from tests.support.tcpstats import Retransmissions, recv_exact, retransmissions

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.bcc,
    pytest.mark.slow,
]

KILLS = 10
ECHO_PORT = 9000  # our own TCP echo server (not a declared container port)
UDP_PORT = 80  # the lab's UDP responder echoes
ROUND_TRIP_EVERY = 0.05
# A round trip slower than this fails the test. Traffic the datapath drops shows as lost segments
# (asserted separately, with TCP's 200 ms minimum retransmission timeout); this limit catches
# traffic held up for longer without a drop. It is above the whole-machine stalls this 2-CPU VM
# has in its slow phases: every connection at once, 1.1-1.9 s, while the agents restarting
# compile with bcc (restart gaps 11-20 s instead of 6-10 s), with every retransmission
# reported by the receiver as a duplicate.
STALL_LIMIT = 3.0
READY_TIMEOUT = 120.0

MODEL = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: server}}
spec:
  nodeName: node-1
  containers: [{name: s, ports: [{containerPort: 80, protocol: TCP}, {containerPort: 80, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: x, labels: {role: client}}
spec:
  nodeName: node-2
  containers: [{name: c, ports: [{containerPort: 80, protocol: TCP}, {containerPort: 80, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: near, namespace: x, labels: {role: client}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{containerPort: 80, protocol: TCP}, {containerPort: 80, protocol: UDP}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: y, labels: {role: client}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{containerPort: 80, protocol: TCP}, {containerPort: 80, protocol: UDP}]}]
"""

# The server takes clients of its own namespace and may send nothing of its own (egress: []),
# so every reply it sends passes only through conntrack; the clients may talk only to it.
POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 80}, {port: 9000}, {port: 80, protocol: UDP}]
  egress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: clients, namespace: x}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: 80}, {port: 9000}, {port: 80, protocol: UDP}]
"""
SERVER, FAR, NEAR, INTRUDER = "x/server", "x/far", "x/near", "y/intruder"
NODES = ("node-1", "node-2")


# ------------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """Everything the background flows observed (appended from their threads)."""

    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    round_trips: int = 0
    max_gap: float = 0.0
    stalls: list[str] = field(default_factory=list)
    retransmits: dict[str, Retransmissions] = field(default_factory=dict)
    udp_sent: dict[str, int] = field(default_factory=dict)
    udp_echoed: dict[str, set[int]] = field(default_factory=dict)
    intruder_attempts: int = 0
    violations: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self, name: str, ns: str, body: Callable[[], None]) -> None:
        def run() -> None:
            try:
                netns.enter(ns)
                body()
            except Exception as exc:
                if not self.stop.is_set():
                    with self.lock:
                        self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def start_echo_server(t: Traffic, ns: str, ready: threading.Event) -> None:
    def serve_one(conn: socket.socket, name: str) -> None:
        conn.settimeout(1.0)
        try:
            while not t.stop.is_set():
                try:
                    data = conn.recv(64)
                except TimeoutError:
                    continue
                if not data:
                    return
                conn.sendall(data)
        finally:
            with t.lock:
                t.retransmits[name] = retransmissions(conn)

    def body() -> None:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.sockets.append(srv)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", ECHO_PORT))
        srv.listen(16)
        srv.settimeout(0.5)
        ready.set()
        while not t.stop.is_set():
            try:
                conn, peer = srv.accept()
            except TimeoutError:
                continue
            t.sockets.append(conn)
            name = f"server side of {peer[0]}:{peer[1]}"
            handler = threading.Thread(target=serve_one, args=(conn, name), daemon=True)
            handler.start()
            t.threads.append(handler)  # joined by finish(), so its retransmit count is in

    t.spawn("echo-server", ns, body)


def start_tcp_client(t: Traffic, name: str, ns: str, server_ip: str, connected: threading.Event) -> None:
    def body() -> None:
        sock = socket.create_connection((server_ip, ECHO_PORT), timeout=5.0)
        t.sockets.append(sock)
        sock.settimeout(5.0)
        connected.set()
        seq = 0
        last = time.monotonic()
        try:
            while not t.stop.is_set():
                msg = struct.pack("!Q", seq)
                sock.sendall(msg)
                if recv_exact(sock, 8) != msg:
                    raise AssertionError(f"echo of {seq} is wrong")
                now = time.monotonic()
                with t.lock:
                    t.round_trips += 1
                    gap = now - last
                    t.max_gap = max(t.max_gap, gap)
                    if gap > STALL_LIMIT + ROUND_TRIP_EVERY:
                        t.stalls.append(f"{name}: {gap:.2f} s between round trips {seq - 1} and {seq}")
                last = now
                seq += 1
                time.sleep(ROUND_TRIP_EVERY)
        finally:
            with t.lock:
                t.retransmits[name] = retransmissions(sock)

    t.spawn(name, ns, body)


def start_udp_flow(t: Traffic, name: str, ns: str, server_ip: str) -> None:
    def body() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t.sockets.append(sock)
        sock.settimeout(0.02)
        with t.lock:
            t.udp_sent[name] = 0
            t.udp_echoed[name] = set()
        seq = 0
        next_send = time.monotonic()
        drain_until = None
        while drain_until is None or time.monotonic() < drain_until:
            if t.stop.is_set() and drain_until is None:
                drain_until = time.monotonic() + 2.0  # late echoes still count
            if drain_until is None and time.monotonic() >= next_send:
                sock.sendto(struct.pack("!Q", seq), (server_ip, UDP_PORT))
                with t.lock:
                    t.udp_sent[name] = seq + 1
                seq += 1
                next_send += ROUND_TRIP_EVERY
            try:
                data = sock.recv(64)
            except TimeoutError:
                continue
            with t.lock:
                t.udp_echoed[name].add(struct.unpack("!Q", data[:8])[0])

    t.spawn(name, ns, body)


def start_intruder(t: Traffic, ns: str, server_ip: str) -> None:
    def body() -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t.sockets.append(udp)
        udp.settimeout(0.2)
        while not t.stop.is_set():
            with t.lock:
                t.intruder_attempts += 1
            try:
                with socket.create_connection((server_ip, ECHO_PORT), timeout=0.2), t.lock:
                    t.violations.append(f"{INTRUDER} connected to {SERVER}:{ECHO_PORT}")
            except OSError:
                pass
            udp.sendto(b"intruder", (server_ip, UDP_PORT))
            try:
                udp.recv(64)
                with t.lock:
                    t.violations.append(f"{INTRUDER} got a UDP echo from {SERVER}:{UDP_PORT}")
            except OSError:
                pass

    t.spawn("intruder", ns, body)


# ------------------------------------------------------------------------------- lab helpers


@dataclass
class LabView:
    lab: Lab

    @property
    def paths(self) -> LabPaths:
        return LabPaths(self.lab.name)

    @property
    def names(self) -> topology.LabNames:
        return topology.LabNames(self.lab.name)

    def pod_ns(self, pod: str) -> str:
        ns, name = pod.split("/")
        return self.names.pod(ns, name)

    def node_ns(self, node: str) -> str:
        return self.names.node(topology.node_index(node) or 1)

    def pin_dir(self, node: str) -> Path:
        return self.paths.pin_root / node

    def agent_pid(self, node: str) -> int:
        pid = self.lab.status()["agents"][node]["pid"]
        assert isinstance(pid, int)
        return pid

    def ready_agent(self, node: str, not_pid: int) -> dict[str, Any] | None:
        """The /status of a new agent process (pid != not_pid) once it reports ready."""
        try:
            pid = int(self.paths.agent_pid(node).read_text())
        except (OSError, ValueError):
            return None
        if pid == not_pid:
            return None
        report = query_agent(self.node_ns(node), timeout=0.5)
        return report if report and report.get("ready") else None

    def wait_ready(self, node: str, old_pid: int) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            report = self.ready_agent(node, old_pid)
            if report is not None:
                return time.monotonic(), report
            time.sleep(0.05)
        log = self.paths.agent_log(node).read_text()[-3000:]
        raise AssertionError(f"agent {node} not ready {READY_TIMEOUT} s after a restart:\n{log}")

    def revision(self, node: str) -> int:
        m = bpfsys.BpfMap.open_pinned(str(self.pin_dir(node) / "vg_config"))
        try:
            raw = m.lookup(codecs.u32_key(0))
            return int(abi.Config.from_bytes(raw).revision) if raw else 0
        finally:
            m.close()

    def ct(self, node: str) -> list[codecs.CtEntry]:
        m = bpfsys.BpfMap.open_pinned(str(self.pin_dir(node) / "vg_ct"))
        try:
            return [codecs.decode_ct(k, v) for k, v in m.items().items()]
        finally:
            m.close()

    def pinned_progs(self, node: str) -> dict[str, bpfsys.ProgId]:
        out = {}
        for name in ("from_pod", "to_pod"):
            fd = bpfsys.obj_get(str(self.pin_dir(node) / f"prog_{name}"))
            try:
                out[name] = bpfsys.prog_id(fd)
            finally:
                os.close(fd)
        return out

    def attached_progs(self, node: str, ifindexes: list[int]) -> dict[int, dict[str, int | None]]:
        attacher = pod_attacher(None)
        return netns.run_in_netns(
            self.node_ns(node), lambda: {i: attacher.attached_prog_ids(i) for i in ifindexes}
        )

    def probe_tables(self) -> dict[str, dict[tuple[str, str], bool]]:
        return {proto: self.lab.probe(80, proto, 4, "--timeout", "2") for proto in ("TCP", "UDP")}


@pytest.fixture
def restart_lab(lab_factory: Callable[..., Lab]) -> Iterator[LabView]:
    lab = lab_factory("--nodes", "2", model=MODEL, agents=True)
    view = LabView(lab)
    try:
        yield view
    finally:
        view.paths.root.joinpath(AGENT_ENV_FILE).unlink(missing_ok=True)


# ------------------------------------------------------------------------------- the test


def _pod_ip(status: dict[str, Any], pod: str) -> str:
    return next(ip for ip in status["pods"][pod]["ips"] if ":" not in ip)


def _flows_of_port(entries: list[codecs.CtEntry], port: int, clients: set[str]) -> list[codecs.CtEntry]:
    """Conntrack entries of connections from `clients` to `port` (not the intruder's attempts)."""
    return [e for e in entries if e.dport == port and e.family == 4 and e.saddr in clients]


def test_ten_agent_kills_and_an_upgrade_drop_nothing_and_let_nothing_through(restart_lab: LabView) -> None:
    view = restart_lab
    view.lab.cli("apply", "-f", "-", stdin=POLICY)
    status = view.lab.status()
    server_ip = _pod_ip(status, SERVER)
    clients = {_pod_ip(status, FAR), _pod_ip(status, NEAR)}

    before = view.probe_tables()
    assert before["TCP"][(FAR, SERVER)] and before["TCP"][(NEAR, SERVER)] and before["UDP"][(FAR, SERVER)]
    assert not before["TCP"][(INTRUDER, SERVER)] and not before["UDP"][(INTRUDER, SERVER)]
    assert not before["TCP"][(SERVER, FAR)], "the server may not open connections (egress: [])"
    assert not before["TCP"][(FAR, INTRUDER)], "clients may talk only to the server"
    revisions = {node: view.revision(node) for node in NODES}

    t = Traffic()
    server_ready = threading.Event()
    start_echo_server(t, view.pod_ns(SERVER), server_ready)
    assert server_ready.wait(10)
    connected = []
    for i, pod in enumerate((FAR, FAR, NEAR, NEAR)):
        ev = threading.Event()
        start_tcp_client(t, f"tcp-{i} {pod}", view.pod_ns(pod), server_ip, ev)
        connected.append(ev)
    assert all(ev.wait(10) for ev in connected), f"long-lived connections did not start: {t.errors}"
    for pod in (FAR, NEAR):
        start_udp_flow(t, f"udp {pod}", view.pod_ns(pod), server_ip)
    start_intruder(t, view.pod_ns(INTRUDER), server_ip)
    time.sleep(1.0)
    long_lived = {node: _flows_of_port(view.ct(node), ECHO_PORT, clients) for node in NODES}

    gaps: list[tuple[str, float]] = []
    during: list[dict[str, dict[tuple[str, str], bool]]] = []
    try:
        for i in range(KILLS):
            node = NODES[i % 2]
            pid = view.agent_pid(node)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            during.append(view.probe_tables())  # mostly while the agent is down or starting
            ready_at, _ = view.wait_ready(node, pid)
            gaps.append((node, ready_at - killed))

        # The upgrade: both agents restart with a program of different code.
        old_progs = {node: view.pinned_progs(node) for node in NODES}
        view.paths.root.joinpath(AGENT_ENV_FILE).write_text("VETHGUARD_EXTRA_CFLAGS=-DVG_UPGRADE_MARKER=2\n")
        pids = {node: view.agent_pid(node) for node in NODES}
        killed = time.monotonic()
        for node in NODES:
            os.kill(pids[node], signal.SIGTERM)  # a rolling update stops the old pod gracefully
        during.append(view.probe_tables())
        reports = {}
        for node in NODES:
            ready_at, reports[node] = view.wait_ready(node, pids[node])
            gaps.append((f"{node} upgrade", ready_at - killed))
        time.sleep(1.0)
        after = view.probe_tables()
        # A new connection after the upgrade is created by the new program (marker 2).
        fresh = netns.run_in_netns(
            view.pod_ns(FAR), lambda: socket.create_connection((server_ip, ECHO_PORT), 5)
        )
        fresh.close()
    finally:
        t.finish()

    upgraded: dict[str, dict[int, dict[str, int | None]]] = {}
    new_progs = {node: view.pinned_progs(node) for node in NODES}
    for node in NODES:
        ifindexes = sorted(set(reports[node]["pod_ifindex"].values()))
        upgraded[node] = view.attached_progs(node, ifindexes)
    ct_after = {node: _flows_of_port(view.ct(node), ECHO_PORT, clients) for node in NODES}

    values = [g for _, g in gaps]
    print(
        "\nrestart gaps (kill -> new agent ready), s: "
        + ", ".join(f"{n} {g:.2f}" for n, g in gaps)
        + f"\n  min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}"
        + f"\ntcp round trips {t.round_trips}, max gap {t.max_gap:.3f} s, retransmissions {t.retransmits}"
        + f"\nudp sent {t.udp_sent}, echoed { ({k: len(v) for k, v in t.udp_echoed.items()}) }"
        + f"\nintruder attempts {t.intruder_attempts}, violations {len(t.violations)}"
        + f"\nprograms before {old_progs}\nprograms after {new_progs}"
    )

    assert not t.errors, f"a flow broke: {t.errors}"
    assert not t.stalls, f"round trips stalled: {t.stalls}"
    # 4 client sides + 4 server sides (+ the server side of the fresh connection)
    sides = (
        sum(1 for k in t.retransmits if k.startswith("tcp-")),
        sum(1 for k in t.retransmits if "server" in k),
    )
    assert sides[0] == 4 and sides[1] >= 4, t.retransmits
    lost = {name: r.lost for name, r in t.retransmits.items() if r.lost}
    assert not lost, f"segments lost: {lost} of {t.retransmits}"
    assert t.round_trips > 100
    for name, sent in t.udp_sent.items():
        missing = sorted(set(range(sent)) - t.udp_echoed[name])
        assert sent > 100 and not missing, (
            f"{name}: {len(missing)} of {sent} datagrams not echoed: {missing[:20]}"
        )
    assert t.intruder_attempts > 10 and not t.violations, t.violations
    for i, tables in enumerate(during):
        assert tables == before, f"probe table changed during restart {i + 1}"
    assert after == before
    assert {node: view.revision(node) for node in NODES} == revisions, "a restart's first sync changed maps"

    for node in NODES:
        assert all(new_progs[node][p].tag != old_progs[node][p].tag for p in new_progs[node]), node
        want = {p: new_progs[node][p].id for p in ("from_pod", "to_pod")}
        assert upgraded[node] and all(v == want for v in upgraded[node].values()), (node, upgraded[node])
        # conntrack kept: the long-lived flows are still the entries the first program created
        kept = {(e.ep_id, e.dir, e.saddr, e.sport) for e in long_lived[node]}
        assert kept and kept <= {(e.ep_id, e.dir, e.saddr, e.sport) for e in ct_after[node] if e.marker == 0}
        assert any(e.marker == 2 for e in ct_after[node]), f"{node}: no flow created by the new program"
