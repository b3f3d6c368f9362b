"""`vethguard uninstall --node` on a lab node where a real agent ran. With clsact filters,
beside someone else's tc state: a foreign u32 filter on one pod veth (sharing the clsact the
agent created) and a foreign clsact on an interface of its own. Uninstall removes every filter
of ours, the clsacts the ledger lists that nobody else uses, the pins and the ledger, and
unchains vethguard-cni; the foreign filter and both clsacts they need stay, the policy stops
applying, and a second run has nothing to do. With tcx links (VETHGUARD_TC_ATTACH=tcx):
uninstall detaches them, and no clsact was ever created."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.datapath.tcx import ATTACH_ENV, TcxAttacher, tcx_supported
from controller.lab import netns, topology
from controller.lab.agents import AgentSupervisor
from controller.lab.state import LabPaths
from tests.support.labs import Lab
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.root, pytest.mark.bcc]

DENY_X_A = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-to-x-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
"""
# someone else's filter: never matches (and a match would only classify, not drop)
FOREIGN_FILTER = "prio 20 protocol all u32 match u32 0xdeadbeef 0xffffffff at 0 classid 1:1"
OUR_NAMES = ("vethguard-from-pod", "vethguard-to-pod", "vethguard-uplink", "vethguard-from-uplink")


def tc(node_ns: str, *args: str) -> str:
    return subprocess.run(["tc", "-n", node_ns, *args], capture_output=True, text=True, check=True).stdout


def ip(node_ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", node_ns, *args], capture_output=True, text=True, check=True).stdout


def filters(node_ns: str, ifname: str) -> str:
    return "".join(tc(node_ns, "filter", "show", "dev", ifname, hook) for hook in ("ingress", "egress"))


def has_clsact(node_ns: str, ifname: str) -> bool:
    return any(
        q.get("kind") == "clsact" for q in json.loads(tc(node_ns, "-j", "qdisc", "show", "dev", ifname))
    )


@pytest.fixture
def agent(
    lab_factory: Callable[..., Lab], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Lab, subprocess.Popen[bytes]]]:
    """A one-node lab without lab agents, and a real agent started by hand in node-1's namespace
    (AgentSupervisor's command line), stopped at the end whatever happened. It attaches with
    clsact filters unless the test asks for "tcx" (VETHGUARD_TC_ATTACH)."""
    mode = getattr(request, "param", "clsact")
    if mode == "tcx" and not tcx_supported():
        pytest.skip("this kernel has no tcx hooks")
    lab = lab_factory("--nodes", "1")
    paths = LabPaths(lab.name)
    supervisor = AgentSupervisor(paths.read_config(), paths, topology.Topology(lab.name))
    env = {**os.environ, ATTACH_ENV: mode}
    with open(tmp_path / "agent.log", "wb") as log:
        proc = subprocess.Popen(
            supervisor.command("node-1"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        yield lab, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def deny_x_a(lab: Lab) -> None:
    """Apply a policy that isolates x/a and wait until it is enforced."""
    lab.cli("apply", "-f", "-", stdin=DENY_X_A)
    wait_for(
        lambda: not lab.probe_tcp(80, ["x/b"], ["x/a"])[("x/b", "x/a")],
        timeout=30,
        what="the policy denies x/b -> x/a",
        interval=0.5,
    )


def uninstall(node_ns: str, lab: Lab, cni: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    paths = LabPaths(lab.name)
    argv = [
        "nsenter",
        f"--net={netns.netns_path(node_ns)}",
        "--",
        sys.executable,
        "-m",
        "controller.cli",
        "uninstall",
        "--node",
        "node-1",
        "--pin-root",
        str(paths.pin_root),
        "--state-dir",
        str(paths.root),
        "--cni-bin-dir",
        str(cni / "bin"),
        "--cni-conf-dir",
        str(cni / "net.d"),
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=dict(os.environ), check=False)


def test_uninstall_removes_exactly_what_vethguard_attached_and_leaves_foreign_tc_state(
    agent: tuple[Lab, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    lab, proc = agent
    node_ns = topology.LabNames(lab.name).node(1)
    paths = LabPaths(lab.name)
    # someone else's clsact on an interface of their own (no dummy driver here: a veth pair)
    ip(node_ns, "link", "add", "vgfx0", "type", "veth", "peer", "name", "vgfx1")
    tc(node_ns, "qdisc", "add", "dev", "vgfx0", "clsact")
    veths = [topology.pod_ifname(ns, pod) for ns, pod in (("x", "a"), ("x", "b"), ("y", "a"))]

    wait_for(
        lambda: all("vethguard-to-pod" in filters(node_ns, v) for v in veths),
        timeout=60,
        what="the agent attached to every pod veth",
        interval=0.5,
    )
    deny_x_a(lab)
    ledgered = (paths.root / "clsact-node-1").read_text().split()
    assert set(veths) <= set(ledgered[1::2]) and "vgfx0" not in ledgered  # ours only
    shared = veths[0]  # a foreign filter on the clsact the agent created
    tc(node_ns, "filter", "add", "dev", shared, "ingress", *FOREIGN_FILTER.split())
    # the CNI configuration with vethguard-cni chained, as cni-install leaves it
    (tmp_path / "cni" / "bin").mkdir(parents=True)
    (tmp_path / "cni" / "net.d").mkdir()
    (tmp_path / "cni" / "bin" / "vethguard-cni").write_bytes(b"plugin")
    plugins = [{"type": "ptp"}, {"type": "vethguard-cni", "nodeName": "node-1"}]
    conflist = tmp_path / "cni" / "net.d" / "10-lab.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "lab", "plugins": plugins}))

    refused = uninstall(node_ns, lab, tmp_path / "cni")
    assert refused.returncode == 1 and "an agent answers on 127.0.0.1:9890" in refused.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0

    done = uninstall(node_ns, lab, tmp_path / "cni", "-o", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    removed = {(s["kind"], s["name"]) for s in report["removed"]}
    kept = {(s["kind"], s["name"].split()[0]): s["detail"] for s in report["kept"]}
    assert {("filter", f"{v} {hook}") for v in veths for hook in ("ingress", "egress")} <= removed
    assert ("pins", str(paths.pin_root / "node-1")) in removed
    assert ("ledger", str(paths.root / "clsact-node-1")) in removed
    assert ("cni-binary", str(tmp_path / "cni" / "bin" / "vethguard-cni")) in removed
    assert kept[("clsact", shared)].endswith("other filters use it: u32 prio 20 on ingress")

    links = [link["ifname"] for link in json.loads(ip(node_ns, "-j", "link", "show"))]
    for ifname in links:  # none of our filters anywhere in the node
        assert not any(name in filters(node_ns, ifname) for name in OUR_NAMES), ifname
    assert "u32" in filters(node_ns, shared) and "deadbeef" in filters(node_ns, shared)
    assert has_clsact(node_ns, shared) and has_clsact(node_ns, "vgfx0")
    for v in veths[1:]:
        assert not has_clsact(node_ns, v), v
        assert ("clsact", f"{v} (ifindex {ip_index(node_ns, v)})") in removed
    assert not (paths.pin_root / "node-1").exists()
    assert not (paths.root / "clsact-node-1").exists()
    assert json.loads(conflist.read_text())["plugins"] == [{"type": "ptp"}]
    assert lab.probe_tcp(80, ["x/b"], ["x/a"])[("x/b", "x/a")]  # the policy no longer applies

    again = uninstall(node_ns, lab, tmp_path / "cni")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("node node-1: nothing to do"), again.stdout


def ip_index(node_ns: str, ifname: str) -> int:
    (link,) = json.loads(ip(node_ns, "-j", "link", "show", ifname))
    return int(link["ifindex"])


@pytest.mark.parametrize("agent", ["tcx"], indirect=True)
def test_uninstall_detaches_the_tcx_links_an_agent_attached_and_creates_no_clsact(
    agent: tuple[Lab, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    lab, proc = agent
    node_ns = topology.LabNames(lab.name).node(1)
    paths = LabPaths(lab.name)
    veths = [topology.pod_ifname(ns, pod) for ns, pod in (("x", "a"), ("x", "b"), ("y", "a"))]
    indexes = {v: ip_index(node_ns, v) for v in veths}

    def ours() -> dict[str, list[str]]:
        links = TcxAttacher()
        return netns.run_in_netns(node_ns, lambda: {v: links.hooks_with_ours(i) for v, i in indexes.items()})

    wait_for(
        lambda: all(len(h) == 2 for h in ours().values()),
        timeout=60,
        what="tcx links on every pod veth",
        interval=0.5,
    )
    deny_x_a(lab)
    assert not any(has_clsact(node_ns, v) for v in veths)  # tcx needs no qdisc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    (tmp_path / "cni" / "bin").mkdir(parents=True)
    (tmp_path / "cni" / "net.d").mkdir()

    done = uninstall(node_ns, lab, tmp_path / "cni", "-o", "json")
    assert done.returncode == 0, done.stderr
    removed = {(s["kind"], s["name"]) for s in json.loads(done.stdout)["removed"]}
    assert {("tcx-link", f"{v} {hook}") for v in veths for hook in ("ingress", "egress")} <= removed
    assert ("pins", str(paths.pin_root / "node-1")) in removed
    assert all(h == [] for h in ours().values())
    assert lab.probe_tcp(80, ["x/b"], ["x/a"])[("x/b", "x/a")]  # the policy no longer applies
