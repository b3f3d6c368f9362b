"""Attach/detach with pyroute2 in network namespaces we create, and real traffic through them."""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue
from controller.core.errors import VethguardError
from controller.core.verdicts import DIR_INGRESS
from controller.datapath import abi, codecs, readback
from controller.datapath.abi import Reason
from controller.datapath.attach import FILTER_NAME, FILTER_PRIO, PARENT_INGRESS
from controller.datapath.node import Datapath
from tests.support.netns_util import in_netns, sh

pytestmark = [pytest.mark.root, pytest.mark.bcc]


@pytest.fixture
def lab() -> Iterator[dict[str, object]]:
    """node ns <-> pod ns over a veth pair; host side 'vgh0' in the node ns."""
    tag = uuid.uuid4().hex[:6]
    node, pod = f"vgt-dp-node-{tag}", f"vgt-dp-pod-{tag}"
    created: list[str] = []
    try:
        for ns in (node, pod):
            sh("ip", "netns", "add", ns)
            created.append(ns)
        sh("ip", "-n", node, "link", "add", "vgh0", "type", "veth", "peer", "name", "eth0", "netns", pod)
        sh("ip", "-n", node, "addr", "add", "10.99.0.1/24", "dev", "vgh0")
        sh("ip", "-n", pod, "addr", "add", "10.99.0.2/24", "dev", "eth0")
        for ns, dev in ((node, "vgh0"), (pod, "eth0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        ifindex = int(sh("ip", "netns", "exec", node, "cat", "/sys/class/net/vgh0/ifindex").stdout)
        yield {"node": node, "pod": pod, "ifindex": ifindex}
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _filters(ns: str, hook: str) -> str:
    return sh("tc", "-n", ns, "filter", "show", "dev", "vgh0", hook).stdout


def _qdiscs(ns: str) -> str:
    return sh("tc", "-n", ns, "qdisc", "show", "dev", "vgh0").stdout


def test_attach_is_idempotent_and_detach_removes_our_filters_and_our_clsact(
    dp: Datapath, lab: dict[str, object]
) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    in_netns(ns, lambda: dp.attach(ifindex))
    in_netns(ns, lambda: dp.attach(ifindex))
    assert in_netns(ns, lambda: dp.attached(ifindex))
    assert _filters(ns, "ingress").count("vethguard-from-pod") == 1
    assert _filters(ns, "egress").count("vethguard-to-pod") == 1
    assert "direct-action" in _filters(ns, "ingress")
    in_netns(ns, lambda: dp.detach(ifindex))
    in_netns(ns, lambda: dp.detach(ifindex))
    assert "vethguard" not in _filters(ns, "ingress") + _filters(ns, "egress")
    assert "clsact" not in _qdiscs(ns)


def test_detach_never_removes_a_clsact_it_did_not_create(dp: Datapath, lab: dict[str, object]) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    sh("tc", "-n", ns, "qdisc", "add", "dev", "vgh0", "clsact")
    in_netns(ns, lambda: dp.attach(ifindex))
    in_netns(ns, lambda: dp.detach(ifindex))
    assert "clsact" in _qdiscs(ns)


def test_attach_replaces_the_filter_an_older_agent_installed_with_our_handle_and_prio_not_adds_one(
    dp: Datapath, lab: dict[str, object]
) -> None:
    # An older agent (pyroute2) left our filter: the raw netlink attach must
    # address the same filter (protocol all, prio 10, handle 1), or the kernel would refuse a
    # second protocol at that prio or leave two programs running.
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    sh("tc", "-n", ns, "qdisc", "add", "dev", "vgh0", "clsact")
    older = dp.prog_id("to_uplink").id  # any program of ours that is not from_pod

    def older_agent() -> None:  # what the agent did before it spoke raw netlink
        with IPRoute() as ipr:
            ipr.tc(
                "replace-filter",
                "bpf",
                ifindex,
                ":1",
                fd=dp.prog_fd("to_uplink"),
                name=FILTER_NAME[PARENT_INGRESS],
                parent=PARENT_INGRESS,
                classid=1,
                direct_action=True,
                prio=FILTER_PRIO,
            )

    in_netns(ns, older_agent)
    assert in_netns(ns, lambda: dp.attached_progs(ifindex))["from_pod"] == older
    in_netns(ns, lambda: dp.attach(ifindex))
    progs = in_netns(ns, lambda: dp.attached_progs(ifindex))
    assert progs == {"from_pod": dp.prog_id("from_pod").id, "to_pod": dp.prog_id("to_pod").id}
    assert _filters(ns, "ingress").count("handle 0x1") == 1
    in_netns(ns, lambda: dp.detach(ifindex))
    assert "clsact" in _qdiscs(ns)  # it was tc's, not ours


def test_attaching_to_a_missing_interface_is_an_error_that_names_it(
    dp: Datapath, lab: dict[str, object]
) -> None:
    ns = str(lab["node"])
    with pytest.raises(VethguardError, match="no interface with ifindex 999999"):
        in_netns(ns, lambda: dp.attach(999999))


def _listen(ns: str, addr: str, port: int) -> socket.socket:
    """A TCP listener created in netns `ns` (a socket stays in the netns it was created in)."""

    def make() -> socket.socket:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(8)
        return srv

    return in_netns(ns, make)


def _connects(ns: str, addr: str, port: int) -> bool:
    def attempt() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as c:
            c.settimeout(1.0)
            try:
                c.connect((addr, port))
            except OSError:
                return False
            return True

    return in_netns(ns, attempt)


def test_real_traffic_is_enforced_on_an_attached_veth(dp: Datapath, lab: dict[str, object]) -> None:
    ns, pod, ifindex = str(lab["node"]), str(lab["pod"]), int(str(lab["ifindex"]))
    peer_id = 4000
    for m in ("vg_ct", "vg_counters", "vg_policy"):
        dp.maps[m].clear()
    # The node-side address plays another pod's role (identity 4000), so policy applies to it.
    k, v = codecs.encode_ipcache(readback.ipnet("10.99.0.1/32"), peer_id, 0)
    dp.maps["vg_ipcache4"].update(k, v)
    k, v = codecs.encode_endpoint(ifindex, 256, abi.EP_F_INGRESS_ISOLATED, "10.99.0.2", None)
    dp.maps["vg_endpoints"].update(k, v)
    listeners = [_listen(ns, "10.99.0.1", 7000), _listen(pod, "10.99.0.2", 7001)]
    try:
        in_netns(ns, lambda: dp.attach(ifindex))
        assert _connects(pod, "10.99.0.1", 7000), "the pod's own connection and its replies must pass"
        assert not _connects(ns, "10.99.0.2", 7001), "an isolated pod must not be reachable without a rule"
        c = dp.counters()
        assert c[(ifindex, int(Reason.ALLOW_REPLY), DIR_INGRESS)][0] >= 1
        assert c[(ifindex, int(Reason.DROP_POLICY), DIR_INGRESS)][0] >= 1
        assert c[(ifindex, int(Reason.ALLOW_NON_IP), DIR_INGRESS)][0] >= 1  # ARP
        pk, pv = codecs.encode_policy(
            ifindex, PolicyEntryKey(DIR_INGRESS, peer_id, 6, 7001, 16), PolicyEntryValue(1, 5)
        )
        dp.maps["vg_policy"].update(pk, pv)
        assert _connects(ns, "10.99.0.2", 7001), "an allow entry must open the pod"
    finally:
        for srv in listeners:
            srv.close()
        in_netns(ns, lambda: dp.detach(ifindex))
        dp.maps["vg_endpoints"].delete(codecs.u32_key(ifindex))
        dp.maps["vg_ipcache4"].clear()


def test_the_uplink_filters_are_one_per_hook_and_leave_pod_filters_alone(
    dp: Datapath, lab: dict[str, object]
) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    in_netns(ns, lambda: dp.attach_uplink(ifindex))
    in_netns(ns, lambda: dp.attach_uplink(ifindex))  # idempotent
    assert in_netns(ns, lambda: dp.uplink_attached(ifindex))
    assert _filters(ns, "egress").count("vethguard-") == 1
    assert _filters(ns, "egress").count("vethguard-uplink") == 1
    assert _filters(ns, "ingress").count("vethguard-") == 1
    assert _filters(ns, "ingress").count("vethguard-from-uplink") == 1
    assert not in_netns(ns, lambda: dp.attached(ifindex))  # not a pod's filters
    in_netns(ns, lambda: dp.detach_uplink(ifindex))
    assert not in_netns(ns, lambda: dp.uplink_attached(ifindex))
    assert "clsact" not in _qdiscs(ns)  # this Datapath added it, nobody else uses it
