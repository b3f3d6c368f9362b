"""Cluster DNS for a lab created with `lab up --dns`: a real dnsmasq in the pod kube-system/kube-dns,
behind the Service kube-system/kube-dns (ClusterIP 10.245.0.10, like kubelet's --cluster-dns).

dnsmasq answers NAME.NAMESPACE.svc.cluster.local from a hosts directory the daemon rewrites when
Services change (dnsmasq rereads it through inotify), answers NXDOMAIN for any other name under
cluster.local and forwards nothing (the lab has no upstream). The pod is an ordinary lab pod: its
traffic crosses its veth like any other, so NetworkPolicies apply to DNS as in a cluster.

ExternalHosts' `spec.names` resolve to their addresses with their `spec.ttl`: one dnsmasq
`host-record` per (name, address) in a conf file (a name several hosts share answers with all
their addresses; over 512 octets dnsmasq sets TC and resolvers ask again over TCP), and its
`spec.aliases` as a chain of `cname` lines ending at its first name. dnsmasq reads
host-records only when it starts, so a change restarts it, and update_external() returns once the
new one answers.

Pods get a resolv.conf the way kubelet writes it (search <ns>.svc.cluster.local svc.cluster.local
cluster.local, ndots:5), kept at /etc/netns/<pod netns>/resolv.conf: `ip netns exec` (used by
`lab exec`) bind-mounts it over /etc/resolv.conf for the command only.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from controller.core import dnsnames, programs
from controller.lab import kubeproxy, netns
from controller.lab.manifests import external_addresses, external_aliases, external_names

log = logging.getLogger("vethguard.lab.dns")

NAMESPACE = "kube-system"
NAME = "kube-dns"
DOMAIN = dnsnames.CLUSTER_DOMAIN
LABELS = {"k8s-app": "kube-dns"}
NO_RESPONDERS_ANNOTATION = "lab.vethguard.dev/no-responders"  # dnsmasq owns port 53
NETNS_ETC = Path("/etc/netns")
SUPERVISE_INTERVAL = 0.5


def objects() -> list[dict[str, Any]]:
    """The Namespace, Pod and Service that make up cluster DNS (applied at `lab up --dns`)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": NAME,
                "namespace": NAMESPACE,
                "labels": dict(LABELS),
                "annotations": {NO_RESPONDERS_ANNOTATION: "true"},
            },
            "spec": {
                "nodeName": "node-1",
                "containers": [
                    {
                        "name": "dnsmasq",
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": dict(LABELS)},
            "spec": {
                "clusterIP": kubeproxy.DNS_CLUSTER_IP,
                "selector": dict(LABELS),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"},
                ],
            },
        },
    ]


def resolv_conf(namespace: str) -> str:
    return (
        f"search {namespace}.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}\n"
        f"nameserver {kubeproxy.DNS_CLUSTER_IP}\n"
        "options ndots:5\n"
    )


def write_resolv_conf(pod_netns: str, namespace: str) -> None:
    directory = NETNS_ETC / pod_netns
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "resolv.conf").write_text(resolv_conf(namespace))


def remove_resolv_conf(pod_netns: str) -> None:
    shutil.rmtree(NETNS_ETC / pod_netns, ignore_errors=True)


def remove_all_resolv_confs(prefix: str) -> list[str]:
    removed = []
    if NETNS_ETC.is_dir():
        for entry in NETNS_ETC.iterdir():
            if entry.name.startswith(prefix):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    return removed


def hosts_text(all_services: list[dict[str, Any]]) -> str:
    lines = []
    for obj in sorted(all_services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        address = (obj.get("spec") or {}).get("clusterIP")
        if address and address != "None":
            meta = obj["metadata"]
            lines.append(f"{address} {meta['name']}.{meta['namespace']}.svc.{DOMAIN}")
    return "\n".join(lines) + "\n"


def external_conf(external_hosts: list[dict[str, Any]]) -> str:
    """dnsmasq configuration lines answering every ExternalHost's names with its addresses."""
    lines = []
    for obj in sorted(external_hosts, key=lambda h: h["metadata"]["name"]):
        names, ttl = external_names(obj)
        for name in names:
            lines += [f"host-record={name},{address},{ttl}" for address in external_addresses(obj)]
        chain = [*external_aliases(obj), *names[:1]]
        lines += [f"cname={alias},{target},{ttl}" for alias, target in itertools.pairwise(chain)]
    return "".join(f"{line}\n" for line in lines)


def _is_live_dnsmasq(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "<pid> (<comm>) <state> ...": a zombie (Z) holds no port any more
    comm, _, rest = stat.partition("(")[2].rpartition(")")
    return comm == "dnsmasq" and rest.split()[0] != "Z"


class DnsServer:
    """dnsmasq inside the kube-dns pod's namespace, restarted when it exits."""

    def __init__(self, directory: Path, pod_netns: str, log_path: Path) -> None:
        self.hosts_dir = directory / "hosts.d"
        self.external_conf = directory / "external.conf"
        self.pod_netns = pod_netns
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one (re)start at a time: the supervisor or an update
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dns", daemon=True)

    def update(self, all_services: list[dict[str, Any]]) -> None:
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        target = self.hosts_dir / "services"
        text = hosts_text(all_services)
        with contextlib.suppress(FileNotFoundError):
            if target.read_text() == text:
                return
        tmp = self.hosts_dir.parent / "services.tmp"  # outside the watched directory
        tmp.write_text(text)
        os.replace(tmp, target)

    def update_external(self, external_hosts: list[dict[str, Any]]) -> None:
        """Answer the ExternalHosts' names from now on (dnsmasq restarted if it runs)."""
        text = external_conf(external_hosts)
        with contextlib.suppress(FileNotFoundError):
            if self.external_conf.read_text() == text:
                return
        self.external_conf.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.external_conf.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.external_conf)
        with self._lock:
            if self.proc is None or self._stopping.is_set():
                return  # start() reads the file
            self._terminate()
            self._spawn()
        self._wait_answering()

    def command(self) -> list[str]:
        return [
            "nsenter",
            f"--net={netns.netns_path(self.pod_netns)}",
            "--",
            "dnsmasq",
            "--keep-in-foreground",
            f"--conf-file={self.external_conf}",
            "--no-resolv",
            "--no-hosts",
            f"--hostsdir={self.hosts_dir}",
            f"--local=/{DOMAIN}/",
            "--user=root",
            "--group=root",
            f"--pid-file={self.hosts_dir.parent / 'dnsmasq.pid'}",
            "--log-facility=-",
            "--port=53",
        ]

    def start(self) -> DnsServer:
        programs.require_command(self.command(), purpose="cluster DNS (lab up --dns)")
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        if not self.external_conf.exists():
            self.external_conf.write_text("")
        self._stop_stale()
        with self._lock:
            self._spawn()
        self._thread.start()
        self._wait_answering()
        return self

    def _wait_answering(self, timeout: float = 5.0) -> None:
        """Until dnsmasq has its UDP port 53 bound (read from its own /proc net view)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError):
                    table = Path(f"/proc/{proc.pid}/net/udp").read_text()
                    if any(line.split()[1].endswith(":0035") for line in table.splitlines()[1:]):
                        return
            time.sleep(0.01)
        log.warning(
            "dnsmasq in %s is not answering after %.0f s (see %s)", self.pod_netns, timeout, self.log_path
        )

    def _stop_stale(self) -> None:
        """A dnsmasq left by a daemon that was killed would hold port 53: stop it first."""
        pid_file = self.hosts_dir.parent / "dnsmasq.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if _is_live_dnsmasq(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not _is_live_dnsmasq(pid):  # (gone, or a zombie its dead parent left)
                    break
                time.sleep(0.05)
        pid_file.unlink(missing_ok=True)

    def _spawn(self) -> None:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        finally:
            log_file.close()
        log.info("dnsmasq started in %s (pid %d)", self.pod_netns, self.proc.pid)

    def _loop(self) -> None:
        while not self._stopping.wait(SUPERVISE_INTERVAL):
            with self._lock:
                if self._stopping.is_set():
                    return
                if self.proc is not None and self.proc.poll() is not None and netns.exists(self.pod_netns):
                    log.warning("dnsmasq exited with %s; starting it again", self.proc.returncode)
                    self._spawn()

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        with self._lock:
            self._terminate()
