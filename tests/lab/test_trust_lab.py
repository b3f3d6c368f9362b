"""The bypasses of issue 13 in a lab, as an attacker sends them: hand-built frames from AF_PACKET
sockets, captured by an AF_PACKET socket inside the victim's network namespace, each with a
control that must arrive (so the capture works and the path is open for what is allowed).

One node, agents on (so every pod is created through the chained vethguard-cni, as in a
cluster). prod/db accepts TCP 5432 only from app=api and from the external host's ipBlocks;
prod/web and evil/x are not allowed; prod/egr may only send TCP 80 to the external host. A
NodePort Service fronts db. Every frame carries a random marker in its payload, and "arrived"
means a frame with that marker was captured on the victim's eth0 (before its own stack).
"""

from __future__ import annotations

import functools
import json
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from controller.core.verdicts import DIR_INGRESS
from controller.datapath.abi import CounterKey, CounterValue, Reason
from controller.datapath.bpfsys import BpfMap
from controller.lab import netns, topology
from controller.lab.state import LabPaths
from tests.support import packets as P
from tests.support.labs import ip_link, lab_up, run_cli

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
]

EXT4, EXT6 = "203.0.113.5", "2001:db8::5"
MODEL = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: evil}}
---
apiVersion: lab.vethguard.dev/v1alpha1
kind: ExternalHost
metadata: {{name: outside}}
spec: {{ip: [{EXT4}, "{EXT6}"], ports: [{{port: 80, protocol: TCP}}]}}
""" + "".join(
    f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}
spec:
  nodeName: node-1
  containers: [{{name: c, ports: [{{containerPort: {port}, protocol: TCP}}]}}]
"""
    for ns, name, port in (
        ("prod", "db", 5432),
        ("prod", "api", 80),
        ("prod", "web", 80),
        ("prod", "egr", 80),
        ("evil", "x", 80),
    )
)
POLICY = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress:
  - from:
    - podSelector: {{matchLabels: {{app: api}}}}
    - ipBlock: {{cidr: 203.0.113.0/24}}
    - ipBlock: {{cidr: "2001:db8::/64"}}
    ports: [{{protocol: TCP, port: 5432}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: egr, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: egr}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: {EXT4}/32}}}}, {{ipBlock: {{cidr: "{EXT6}/128"}}}}]
    ports: [{{protocol: TCP, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: prod}}
spec:
  type: NodePort
  selector: {{app: db}}
  ports: [{{port: 5432, targetPort: 5432}}]
"""
SETTLE = 0.5  # how long a frame that is let through takes at most, on a loaded machine
ARRIVE = 3.0  # how long a control may take


@dataclass
class Host:
    """A namespace that sends frames from its eth0 to the next hop and captures on it."""

    netns: str
    ip4: str
    ip6: str
    mac: bytes
    next_hop_mac: bytes
    tx: socket.socket
    rx: socket.socket

    def send(self, frame: bytes) -> None:
        self.tx.send(self.next_hop_mac + self.mac + frame[12:])

    def drain(self) -> None:
        while select.select([self.rx], [], [], 0)[0]:
            self.rx.recv(65535)

    def saw(self, marker: bytes, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.rx], [], [], left)[0]:
                data, addr = self.rx.recvfrom(65535)
                if addr[2] != socket.PACKET_OUTGOING and marker in data:
                    return True
        return False


@dataclass
class Env:
    lab: str
    hosts: dict[str, Host]
    node4: str
    node6: str
    uplink: int  # the node's eth0
    veth: dict[str, int]  # pod -> host-side veth ifindex
    node_port: int
    counters: BpfMap

    def count(self, ep: int, reason: Reason, direction: int = DIR_INGRESS) -> int:
        key = CounterKey(ep_id=ep, reason=int(reason), dir=direction)
        values = self.counters.lookup_percpu(key.to_bytes())
        return sum(CounterValue.from_bytes(v).packets for v in values or [])

    def probe(self, source: str, target: str, port: int) -> bool:
        out = run_cli(
            "probe",
            "--name",
            self.lab,
            "--port",
            str(port),
            "--protocol",
            "TCP",
            "--from",
            source,
            "--to",
            target,
            "--timeout",
            "2",
            "-o",
            "json",
        ).stdout
        [result] = json.loads(out)["results"]
        return bool(result["connected"])


def _mac(link: dict[str, object]) -> bytes:
    return bytes.fromhex(str(link["address"]).replace(":", ""))


def _sockets() -> tuple[socket.socket, socket.socket]:
    return P.open_tx(), P.open_rx()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    opened: list[socket.socket] = []
    counters: BpfMap | None = None
    with lab_up(MODEL, timeout=120) as lab:
        try:
            lab.cli("apply", "-f", "-", stdin=POLICY)
            status = lab.status()
            node = status["nodes"]["node-1"]
            names = topology.LabNames(lab.name)
            hosts: dict[str, Host] = {}
            veth: dict[str, int] = {}

            def add(key: str, ns: str, ips: list[str], next_hop: dict[str, object]) -> None:
                tx, rx = netns.run_in_netns(ns, _sockets)
                opened.extend((tx, rx))
                hosts[key] = Host(
                    ns,
                    next(i for i in ips if ":" not in i),
                    next(i for i in ips if ":" in i),
                    _mac(ip_link(ns, "eth0")),
                    _mac(next_hop),
                    tx,
                    rx,
                )

            for key, info in status["pods"].items():
                pod_ns, pod_name = key.split("/")
                host_side = ip_link(node["netns"], topology.pod_ifname(pod_ns, pod_name))
                veth[pod_name] = int(str(host_side["ifindex"]))
                add(pod_name, info["netns"], info["ips"], host_side)
            ext = status["externals"]["outside"]
            add("outside", ext["netns"], ext["ips"], ip_link(names.fabric, topology.ext_ifname("outside")))
            counters = BpfMap.open_pinned(str(LabPaths(lab.name).pin_root / "node-1" / "vg_counters"))
            yield Env(
                lab=lab.name,
                hosts=hosts,
                node4=node["ips"][0],
                node6=node["ips"][1],
                uplink=int(str(ip_link(node["netns"], "eth0")["ifindex"])),
                veth=veth,
                node_port=int(status["services"]["prod/db"]["ports"][0]["nodePort"]),
                counters=counters,
            )
        finally:
            for s in opened:
                s.close()
            if counters is not None:
                counters.close()


def marker() -> bytes:
    return b"VGMARK" + os.urandom(10)


def syn(src: str, dst: str, dport: int, mark: bytes, sport: int = 41000) -> bytes:
    segment = P.tcp(sport, dport, payload=mark)
    return (
        P.ipv6(src, dst, P.TCP, segment) if ":" in src else P.ipv4(src, dst, P.TCP, segment, checksummed=True)
    )


def sent_and_seen(sender: Host, victim: Host, frame_of: Callable[[bytes], bytes], seconds: float) -> bool:
    mark = marker()
    victim.drain()
    sender.send(frame_of(mark))
    return victim.saw(mark, seconds)


# -- 1. forged sources from off-cluster ----------------------------------------------------------


def test_an_external_host_cannot_send_as_a_local_pod_or_as_the_node(env: Env) -> None:
    ext, db, api = env.hosts["outside"], env.hosts["db"], env.hosts["api"]
    before = env.count(env.uplink, Reason.DROP_SPOOFED)
    forged = {
        "api v4": (api.ip4, db.ip4),
        "api v6": (api.ip6, db.ip6),
        "node v4": (env.node4, db.ip4),
        "node v6": (env.node6, db.ip6),
    }
    arrived = {
        what: sent_and_seen(ext, db, functools.partial(syn, src, dst, 5432), SETTLE)
        for what, (src, dst) in forged.items()
    }
    assert arrived == dict.fromkeys(forged, False)
    # at least api v4/v6 and node v6; the v4 node address may meet the fabric's reverse-path filter
    assert env.count(env.uplink, Reason.DROP_SPOOFED) - before >= 3
    # controls: the external host's own addresses, which db's ipBlocks accept, arrive
    assert sent_and_seen(ext, db, lambda m: syn(EXT4, db.ip4, 5432, m), ARRIVE)
    assert sent_and_seen(ext, db, lambda m: syn(EXT6, db.ip6, 5432, m), ARRIVE)


# -- 2. forwarded neighbour discovery ------------------------------------------------------------


def nd(src: str, dst: str, typ: int, mark: bytes, size: int = 0) -> bytes:
    body = bytes(20) + mark + bytes(max(0, size - len(mark)))
    return P.ipv6(src, dst, P.ICMPV6, P.icmp6(typ, body), hop_limit=255)


def test_neighbour_discovery_is_not_a_way_between_pods_or_out_of_an_isolated_pod(env: Env) -> None:
    web, db, egr, ext = env.hosts["web"], env.hosts["db"], env.hosts["egr"], env.hosts["outside"]
    assert not sent_and_seen(web, db, lambda m: nd(web.ip6, db.ip6, 135, m, 200), SETTLE)
    for typ in (136, 143):
        out = functools.partial(nd, egr.ip6, EXT6, typ, size=500)
        assert not sent_and_seen(egr, ext, out, SETTLE), typ
    # controls: what the policies allow arrives by the same sockets
    assert sent_and_seen(env.hosts["api"], db, lambda m: syn(env.hosts["api"].ip6, db.ip6, 5432, m), ARRIVE)
    assert sent_and_seen(egr, ext, lambda m: syn(egr.ip6, EXT6, 80, m), ARRIVE)


# -- 3. the ICMPv6 "reply" pivot -----------------------------------------------------------------


def test_an_icmpv6_error_from_the_victim_opens_no_way_back_in(env: Env) -> None:
    ext, db = env.hosts["outside"], env.hosts["db"]
    # to db:5432, which ext may reach, with an unknown destination option whose type says
    # "discard and send a Parameter Problem": db's own stack answers with an ICMPv6 error
    options = struct.pack("!BB", P.TCP, 0) + struct.pack("!BB", 0x80 | 0x1E, 4) + bytes(4)
    mark = marker()
    ext.drain()
    ext.send(P.ipv6(EXT6, db.ip6, 60, options + P.tcp(41001, 5432, payload=mark)))
    assert ext.saw(mark, ARRIVE), "db answered with a Parameter Problem (the pivot's first half)"
    # ... which must not make ext's other ICMPv6 db's "replies"
    data = struct.pack("!BBH", 200, 0, 0)
    assert not sent_and_seen(ext, db, lambda m: P.ipv6(EXT6, db.ip6, P.ICMPV6, data + m), SETTLE)
    assert sent_and_seen(ext, db, lambda m: syn(EXT6, db.ip6, 5432, m, 41002), ARRIVE)  # control


# -- 4. ICMP errors about a tracked flow, from another pod ---------------------------------------


@pytest.fixture
def api_connection(env: Env) -> Iterator[int]:
    """A TCP connection api -> db:5432 held open; yields api's source port."""
    db = env.hosts["db"]
    ready = threading.Event()
    done = threading.Event()
    port: list[int] = []

    def hold() -> None:
        with socket.create_connection((db.ip4, 5432), timeout=5) as s:
            port.append(s.getsockname()[1])
            ready.set()
            done.wait(30)

    thread = threading.Thread(target=lambda: netns.run_in_netns(env.hosts["api"].netns, hold), daemon=True)
    thread.start()
    assert ready.wait(10), "api could not connect to db:5432"
    try:
        yield port[0]
    finally:
        done.set()
        thread.join(10)


def test_an_icmp_error_about_a_tracked_flow_counts_only_from_its_peer(env: Env, api_connection: int) -> None:
    x, api, db = env.hosts["x"], env.hosts["api"], env.hosts["db"]
    embedded = P.ipv4(db.ip4, api.ip4, P.TCP, P.tcp(5432, api_connection), checksummed=True)[14:42]

    def error(src: str) -> Callable[[bytes], bytes]:
        return lambda m: P.ipv4(
            src, db.ip4, P.ICMP, struct.pack("!BBHI", 3, 3, 0, 0) + embedded + m, checksummed=True
        )

    assert not sent_and_seen(x, db, error(x.ip4), SETTLE)  # x speaks for api
    assert sent_and_seen(api, db, error(api.ip4), ARRIVE)  # control: api itself


# -- 5. NodePort with masquerade -------------------------------------------------------------------


def test_a_pod_through_its_own_nodes_node_port_is_judged_as_itself(env: Env) -> None:
    before = env.count(env.veth["db"], Reason.DROP_POLICY)
    assert not env.probe("evil/x", env.node4, env.node_port)
    assert env.count(env.veth["db"], Reason.DROP_POLICY) > before
    assert env.count(env.veth["db"], Reason.ALLOW_HOST) == 0
    assert env.probe("prod/api", env.node4, env.node_port)  # control: api is allowed


# -- 6. a pod created while its agent is down ----------------------------------------------------

DB2 = """
apiVersion: v1
kind: Pod
metadata: {name: db2, namespace: prod, labels: {app: db}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{containerPort: 5432, protocol: TCP}]}]
"""


def connects(netns_name: str, address: str, port: int, seconds: float) -> tuple[int, int]:
    """(attempts, connections made) of back-to-back TCP connects from a namespace for `seconds`."""

    def loop() -> tuple[int, int]:
        tries = made = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tries += 1
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.05)
                try:
                    s.connect((address, port))
                    made += 1
                except OSError:
                    pass
        return tries, made

    return netns.run_in_netns(netns_name, loop)


def test_a_pod_created_while_its_agent_is_stopped_is_closed_until_the_agent_realizes_it(env: Env) -> None:
    status = json.loads(run_cli("status", "--name", env.lab, "-o", "json").stdout)
    pid = int(status["agents"]["node-1"]["pid"])
    os.kill(pid, signal.SIGSTOP)  # hung, not dead: the lab does not restart it
    try:
        out = run_cli("apply", "--name", env.lab, "-f", "-", "--timeout", "1", stdin=DB2, check=False)
        assert "timed out" in out.stderr, out.stderr  # created; the stopped agent realized nothing
        pods = json.loads(run_cli("status", "--name", env.lab, "-o", "json").stdout)["pods"]
        db2 = next(ip for ip in pods["prod/db2"]["ips"] if ":" not in ip)
        for client in ("x", "api"):  # policy or not: nothing reaches a pod whose policy is unknown
            tries, made = connects(env.hosts[client].netns, db2, 5432, 1.5)
            assert tries > 10 and made == 0, (client, tries, made)
    finally:
        os.kill(pid, signal.SIGCONT)
    # controls: once the agent runs, db's policy applies to db2 (app=db): api in, x still out
    deadline = time.monotonic() + 30
    while connects(env.hosts["api"].netns, db2, 5432, 0.3)[1] == 0:
        assert time.monotonic() < deadline, "the resumed agent never realized db2"
    assert connects(env.hosts["x"].netns, db2, 5432, 0.5)[1] == 0
