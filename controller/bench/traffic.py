"""Traffic between the benchmark's pods: iperf3 (TCP throughput, 64-byte UDP), sockperf (TCP
ping-pong: latency and request/response rate), run in the pods through `vethguard lab exec`, with
clients on one CPU and servers on another (taskset), and the parsers of their output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from controller.bench import synth
from controller.bench.common import lab_cli
from controller.core.errors import VethguardError
from controller.lab import topology


def role_cpu(role: str) -> str:
    """The CPU a role's programs run on (taskset -c), the same in every configuration and round:
    the first usable one for clients, the second for servers (the first when only one is
    usable)."""
    cpus = sorted(os.sched_getaffinity(0))
    return str(cpus[1] if role == "server" and len(cpus) > 1 else cpus[0])


def in_client(lab: str, client: str, seconds: float, *argv: str) -> str:
    """stdout of a measuring run of `seconds` in the client pod (`vethguard lab exec`), on the
    clients' CPU."""
    target = f"{synth.BENCH_NS}/{client}"
    cpu = role_cpu("client")
    return lab_cli("exec", "--name", lab, target, "--", "taskset", "-c", cpu, *argv, timeout=seconds + 60)


def iperf3(lab: str, client: str, server_ip: str, seconds: float) -> float:
    """Single-stream TCP throughput client -> server in Gbit/s (receiver side)."""
    out = in_client(
        lab, client, seconds, "iperf3", "-c", server_ip, "-p", str(synth.IPERF_PORT), "-t", str(seconds), "-J"
    )
    doc = json.loads(out)
    return float(doc["end"]["sum_received"]["bits_per_second"]) / 1e9


@dataclass(frozen=True)
class UdpRun:
    """One iperf3 -u run: datagrams the server received and the client sent (thousands per
    second), and each side's CPU use (%) as iperf3 reports it; a sender near 100% with no loss is
    the client's limit, loss with an idle sender the server's."""

    received_kpps: float
    sent_kpps: float
    client_cpu_pct: float
    server_cpu_pct: float


def iperf3_udp64(lab: str, client: str, server_ip: str, seconds: float) -> UdpRun:
    """64-byte UDP datagrams client -> server as fast as the client sends them (-b 0)."""
    udp = ("-u", "-l", "64", "-b", "0")
    out = in_client(
        lab,
        client,
        seconds,
        "iperf3",
        "-c",
        server_ip,
        "-p",
        str(synth.IPERF_PORT),
        *udp,
        "-t",
        str(seconds),
        "-J",
    )
    return udp_run(json.loads(out))


def udp_run(doc: dict[str, Any]) -> UdpRun:
    """The figures of an iperf3 -u -J document; sent = received where it reports no sum_sent."""
    end = doc.get("end") or {}
    sent = end.get("sum_sent") or {}
    cpu = end.get("cpu_utilization_percent") or {}
    received = udp_received_kpps(doc)
    return UdpRun(
        received_kpps=received,
        sent_kpps=int(sent["packets"]) / float(sent["seconds"]) / 1000
        if sent.get("packets") and sent.get("seconds")
        else received,
        client_cpu_pct=float(cpu.get("host_total") or 0.0),
        server_cpu_pct=float(cpu.get("remote_total") or 0.0),
    )


def udp_received_kpps(doc: dict[str, Any]) -> float:
    """Datagrams the server received per second (thousands) from iperf3 -u -J output: its
    sum_received where this iperf3 reports one, else sum's packets minus lost_packets."""
    end = doc.get("end") or {}
    summary = end.get("sum_received") if "packets" in (end.get("sum_received") or {}) else end.get("sum")
    if not summary or "packets" not in summary or not summary.get("seconds"):
        why = doc.get("error") or json.dumps(end)[:500]
        raise VethguardError(f"iperf3 -u printed no packet counts: {why}")
    received = int(summary["packets"]) - int(summary.get("lost_packets") or 0)
    return received / float(summary["seconds"]) / 1000


PERCENTILE_RE = re.compile(r"percentile\s+(\d+\.\d+)\s*=\s*([\d.]+)")
VALID_RE = re.compile(r"\[Valid Duration\] RunTime=([\d.]+) sec;.*?ReceivedMessages=(\d+)")


def parse_sockperf(text: str) -> tuple[float, float]:
    """(p50, p99) round-trip times in microseconds from sockperf's summary."""
    found = {float(q): float(v) for q, v in PERCENTILE_RE.findall(text)}
    if 50.0 not in found or 99.0 not in found:
        raise VethguardError(f"sockperf printed no p50/p99 percentiles:\n{text[-2000:]}")
    return found[50.0], found[99.0]


def parse_sockperf_rate(text: str) -> float:
    """Request/response transactions per second (thousands) of a ping-pong run: one message in
    flight, so the replies received in the valid duration are the transactions."""
    found = VALID_RE.search(text)
    if found is None or float(found.group(1)) <= 0:
        raise VethguardError(f"sockperf printed no [Valid Duration] message counts:\n{text[-2000:]}")
    return int(found.group(2)) / float(found.group(1)) / 1000


def sockperf(lab: str, client: str, server_ip: str, seconds: float) -> tuple[float, float, float]:
    """TCP ping-pong at the fastest rate (sockperf's default there): (p50 us, p99 us, k transactions/s)."""
    port, run_seconds = str(synth.SOCKPERF_PORT), str(max(1, round(seconds)))
    out = in_client(
        lab,
        client,
        seconds,
        "sockperf",
        "ping-pong",
        "--tcp",
        "-i",
        server_ip,
        "-p",
        port,
        "-t",
        run_seconds,
        "--full-rtt",
    )
    return (*parse_sockperf(out), parse_sockperf_rate(out))


def start_servers(lab: str, server: str) -> list[subprocess.Popen[bytes]]:
    """iperf3 and sockperf servers in the server pod (lab exec execs nsenter: the pid is the server)."""
    target = f"{synth.BENCH_NS}/{server}"
    base = [sys.executable, "-m", "controller.cli", "lab", "exec", "--name", lab, target, "--"]
    cpu = role_cpu("server")  # (taskset execs the server: the pid is still the server's)
    iperf3 = [*base, "taskset", "-c", cpu, "iperf3", "-s", "-p", str(synth.IPERF_PORT)]
    port = str(synth.SOCKPERF_PORT)
    sockperf = [*base, "taskset", "-c", cpu, "sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", port]
    return [
        subprocess.Popen(iperf3, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(sockperf, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]


def wait_listening(lab: str, server: str, timeout: float = 30.0) -> None:
    pod_ns = topology.LabNames(lab).pod(synth.BENCH_NS, server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "netns", "exec", pod_ns, "ss", "-Htln"], capture_output=True, text=True
        ).stdout
        ports = {line.split()[3].rsplit(":", 1)[-1] for line in out.splitlines() if len(line.split()) > 3}
        if {str(synth.IPERF_PORT), str(synth.SOCKPERF_PORT)} <= ports:
            return
        time.sleep(0.2)
    raise VethguardError(f"iperf3/sockperf servers did not start listening in {server}")
