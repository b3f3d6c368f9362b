"""Attach/detach with both attachers (clsact filters, tcx links: controller/datapath/tcx.py) in
network namespaces we create, and real traffic through them."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pyroute2 import IPRoute

from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue
from controller.core.errors import VethguardError
from controller.core.verdicts import DIR_INGRESS
from controller.datapath import abi, bpflinks, codecs, readback, tcx
from controller.datapath.abi import Reason
from controller.datapath.attach import FILTER_NAME, FILTER_PRIO, PARENT_EGRESS, PARENT_INGRESS
from controller.datapath.node import Datapath
from tests.support.netns_util import in_netns, sh, veth_pair

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


@pytest.fixture(scope="module")
def dp_clsact(dp: Datapath) -> Datapath:
    """The default attacher: clsact filters (DESIGN.md, Datapath)."""
    assert dp.attach_mode == "clsact"
    return dp


@pytest.fixture(params=["clsact", "tcx"])
def any_dp(request: pytest.FixtureRequest) -> Datapath:
    return request.getfixturevalue("dp_clsact" if request.param == "clsact" else "dp_tcx")


def _filters(ns: str, hook: str) -> str:
    return sh("tc", "-n", ns, "filter", "show", "dev", "vgh0", hook).stdout


def _qdiscs(ns: str) -> str:
    return sh("tc", "-n", ns, "qdisc", "show", "dev", "vgh0").stdout


def test_attach_is_idempotent_and_detach_removes_our_filters_and_our_clsact(
    dp_clsact: Datapath, lab: dict[str, object]
) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    in_netns(ns, lambda: dp_clsact.attach(ifindex))
    in_netns(ns, lambda: dp_clsact.attach(ifindex))
    assert in_netns(ns, lambda: dp_clsact.attached(ifindex))
    assert _filters(ns, "ingress").count("vethguard-from-pod") == 1
    assert _filters(ns, "egress").count("vethguard-to-pod") == 1
    assert "direct-action" in _filters(ns, "ingress")
    in_netns(ns, lambda: dp_clsact.detach(ifindex))
    in_netns(ns, lambda: dp_clsact.detach(ifindex))
    assert "vethguard" not in _filters(ns, "ingress") + _filters(ns, "egress")
    assert "clsact" not in _qdiscs(ns)


def test_detach_never_removes_a_clsact_it_did_not_create(dp_clsact: Datapath, lab: dict[str, object]) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    sh("tc", "-n", ns, "qdisc", "add", "dev", "vgh0", "clsact")
    in_netns(ns, lambda: dp_clsact.attach(ifindex))
    in_netns(ns, lambda: dp_clsact.detach(ifindex))
    assert "clsact" in _qdiscs(ns)


def test_attach_replaces_the_filter_an_older_agent_installed_with_our_handle_and_prio_not_adds_one(
    dp_clsact: Datapath, lab: dict[str, object]
) -> None:
    # An older agent (pyroute2) left our filter: the raw netlink attach must
    # address the same filter (protocol all, prio 10, handle 1), or the kernel would refuse a
    # second protocol at that prio or leave two programs running.
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    sh("tc", "-n", ns, "qdisc", "add", "dev", "vgh0", "clsact")
    older = dp_clsact.prog_id("to_uplink").id  # any program of ours that is not from_pod

    def older_agent() -> None:  # what the agent did before it spoke raw netlink
        with IPRoute() as ipr:
            ipr.tc(
                "replace-filter",
                "bpf",
                ifindex,
                ":1",
                fd=dp_clsact.prog_fd("to_uplink"),
                name=FILTER_NAME[PARENT_INGRESS],
                parent=PARENT_INGRESS,
                classid=1,
                direct_action=True,
                prio=FILTER_PRIO,
            )

    in_netns(ns, older_agent)
    assert in_netns(ns, lambda: dp_clsact.attached_progs(ifindex))["from_pod"] == older
    in_netns(ns, lambda: dp_clsact.attach(ifindex))
    progs = in_netns(ns, lambda: dp_clsact.attached_progs(ifindex))
    assert progs == {"from_pod": dp_clsact.prog_id("from_pod").id, "to_pod": dp_clsact.prog_id("to_pod").id}
    assert _filters(ns, "ingress").count("handle 0x1") == 1
    in_netns(ns, lambda: dp_clsact.detach(ifindex))
    assert "clsact" in _qdiscs(ns)  # it was tc's, not ours


def test_attaching_to_a_missing_interface_is_an_error_that_names_it(
    any_dp: Datapath, lab: dict[str, object]
) -> None:
    ns = str(lab["node"])
    with pytest.raises(VethguardError, match="no interface with ifindex 999999"):
        in_netns(ns, lambda: any_dp.attach(999999))


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


PEER_ID = 4000  # the node-side address plays another pod's role, so policy applies to it


@contextmanager
def isolated_pod(dp: Datapath, lab: dict[str, object], ports: tuple[int, int]) -> Iterator[None]:
    """The lab's pod isolated for ingress (no rule), its node side a peer of identity PEER_ID,
    listeners on the node side (ports[0]) and in the pod (ports[1]), our programs attached;
    everything undone at the end."""
    ns, pod, ifindex = str(lab["node"]), str(lab["pod"]), int(str(lab["ifindex"]))
    for m in ("vg_ct", "vg_counters", "vg_policy"):
        dp.maps[m].clear()
    k, v = codecs.encode_ipcache(readback.ipnet("10.99.0.1/32"), PEER_ID, 0)
    dp.maps["vg_ipcache4"].update(k, v)
    k, v = codecs.encode_endpoint(ifindex, 256, abi.EP_F_INGRESS_ISOLATED, "10.99.0.2", None)
    dp.maps["vg_endpoints"].update(k, v)
    listeners = [_listen(ns, "10.99.0.1", ports[0]), _listen(pod, "10.99.0.2", ports[1])]
    try:
        in_netns(ns, lambda: dp.attach(ifindex))
        yield
    finally:
        for srv in listeners:
            srv.close()
        in_netns(ns, lambda: dp.detach(ifindex))
        dp.maps["vg_endpoints"].delete(codecs.u32_key(ifindex))
        dp.maps["vg_ipcache4"].clear()


def test_real_traffic_is_enforced_on_an_attached_veth(any_dp: Datapath, lab: dict[str, object]) -> None:
    ns, pod, ifindex = str(lab["node"]), str(lab["pod"]), int(str(lab["ifindex"]))
    with isolated_pod(any_dp, lab, (7000, 7001)):
        assert _connects(pod, "10.99.0.1", 7000), "the pod's own connection and its replies must pass"
        assert not _connects(ns, "10.99.0.2", 7001), "an isolated pod must not be reachable without a rule"
        c = any_dp.counters()
        assert c[(ifindex, int(Reason.ALLOW_REPLY), DIR_INGRESS)][0] >= 1
        assert c[(ifindex, int(Reason.DROP_POLICY), DIR_INGRESS)][0] >= 1
        assert c[(ifindex, int(Reason.ALLOW_NON_IP), DIR_INGRESS)][0] >= 1  # ARP
        pk, pv = codecs.encode_policy(
            ifindex, PolicyEntryKey(DIR_INGRESS, PEER_ID, 6, 7001, 16), PolicyEntryValue(1, 5)
        )
        any_dp.maps["vg_policy"].update(pk, pv)
        assert _connects(ns, "10.99.0.2", 7001), "an allow entry must open the pod"


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


# --- tcx links (controller/datapath/tcx.py) -------------------------------------------------------


def _tcx(ns: str, ifindex: int, hook: str) -> list[tuple[int, str]]:
    """(link id, program name) of every program on the hook, in run order."""
    attach_type = tcx.ATTACH_TYPE[PARENT_INGRESS if hook == "ingress" else PARENT_EGRESS]

    def query() -> list[tuple[int, str]]:
        return [
            (a.link_id, bpflinks.prog_name_by_id(a.prog_id)) for a in bpflinks.tcx_query(ifindex, attach_type)
        ]

    return in_netns(ns, query)


def test_tcx_attach_is_one_pinned_link_per_hook_and_detach_removes_links_and_pins(
    dp_tcx: Datapath, lab: dict[str, object]
) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    pins = dp_tcx.pin_dir / "links"
    in_netns(ns, lambda: dp_tcx.attach(ifindex))
    first = _tcx(ns, ifindex, "ingress")
    in_netns(ns, lambda: dp_tcx.attach(ifindex))
    assert _tcx(ns, ifindex, "ingress") == first  # the same link: attaching twice is a no-op
    assert [name for _, name in first] == ["from_pod"]
    assert [name for _, name in _tcx(ns, ifindex, "egress")] == ["to_pod"]
    netns = in_netns(ns, tcx.netns_inode)
    assert sorted(p.name for p in pins.iterdir()) == [f"{netns}-{ifindex}-{h}" for h in ("egress", "ingress")]
    assert in_netns(ns, lambda: dp_tcx.attached(ifindex))
    assert in_netns(ns, lambda: dp_tcx.attached_progs(ifindex)) == {
        "from_pod": dp_tcx.prog_id("from_pod").id,
        "to_pod": dp_tcx.prog_id("to_pod").id,
    }
    assert "clsact" not in _qdiscs(ns)  # tcx needs no qdisc
    in_netns(ns, lambda: dp_tcx.detach(ifindex))
    in_netns(ns, lambda: dp_tcx.detach(ifindex))
    assert _tcx(ns, ifindex, "ingress") == [] and _tcx(ns, ifindex, "egress") == []
    assert not list(pins.iterdir())
    assert not in_netns(ns, lambda: dp_tcx.attached(ifindex))


def test_tcx_attach_swaps_the_program_of_the_same_link_in_place(
    dp_tcx: Datapath, lab: dict[str, object]
) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    attacher = tcx.TcxAttacher(links_dir=dp_tcx.pin_dir / "links")
    other = {PARENT_INGRESS: dp_tcx.prog_fd("to_uplink"), PARENT_EGRESS: dp_tcx.prog_fd("to_pod")}
    try:
        in_netns(ns, lambda: attacher.attach_programs(ifindex, other))  # an older program set
        ((link, name),) = _tcx(ns, ifindex, "ingress")
        assert name == "to_uplink"
        in_netns(ns, lambda: dp_tcx.attach(ifindex))
        assert _tcx(ns, ifindex, "ingress") == [(link, "from_pod")]  # same link, new program
    finally:
        in_netns(ns, lambda: dp_tcx.detach(ifindex))


def test_tcx_links_go_first_and_detach_leaves_anyone_elses(dp_tcx: Datapath, lab: dict[str, object]) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    # someone else's program (ours under another name stands in for it), attached before ours
    foreign = in_netns(
        ns,
        lambda: bpflinks.tcx_link_create(dp_tcx.prog_fd("from_uplink"), ifindex, bpflinks.BPF_TCX_INGRESS, 0),
    )
    try:
        in_netns(ns, lambda: dp_tcx.attach(ifindex))
        assert [name for _, name in _tcx(ns, ifindex, "ingress")] == ["from_pod", "from_uplink"]
        in_netns(ns, lambda: dp_tcx.detach(ifindex))
        assert [name for _, name in _tcx(ns, ifindex, "ingress")] == ["from_uplink"]
    finally:
        os.close(foreign)
    assert _tcx(ns, ifindex, "ingress") == []  # a link without fd or pin is gone


def test_tcx_attach_takes_over_from_our_clsact_filters_and_clsact_attach_takes_back(
    dp_tcx: Datapath, dp_clsact: Datapath, lab: dict[str, object]
) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    try:
        in_netns(ns, lambda: dp_clsact.attach(ifindex))  # an agent of before, or a kernel without tcx
        assert "vethguard-from-pod" in _filters(ns, "ingress")
        in_netns(ns, lambda: dp_tcx.attach(ifindex))
        assert "vethguard" not in _filters(ns, "ingress") + _filters(ns, "egress")
        assert [name for _, name in _tcx(ns, ifindex, "egress")] == ["to_pod"]
        in_netns(ns, lambda: dp_clsact.attach(ifindex))  # VETHGUARD_TC_ATTACH=clsact after tcx
        assert _tcx(ns, ifindex, "ingress") == [] and _tcx(ns, ifindex, "egress") == []
        assert "vethguard-to-pod" in _filters(ns, "egress")
    finally:
        in_netns(ns, lambda: dp_clsact.detach(ifindex))
        in_netns(ns, lambda: dp_tcx.detach(ifindex))


def test_tcx_a_deleted_interfaces_pin_is_swept_and_a_reused_ifindex_gets_a_new_link(
    dp_tcx: Datapath, lab: dict[str, object]
) -> None:
    ns, ifindex = str(lab["node"]), int(str(lab["ifindex"]))
    pins = dp_tcx.pin_dir / "links"
    in_netns(ns, lambda: dp_tcx.attach(ifindex))
    sh("ip", "-n", ns, "link", "del", "vgh0")
    assert len(list(pins.glob(f"*-{ifindex}-ingress"))) == 1  # defunct, still pinned
    # a new veth with the same ifindex: the stale pin must not pass for its link
    sh("ip", "-n", ns, "link", "add", "vgh0", "index", str(ifindex), "type", "veth", "peer", "name", "vgp0")
    in_netns(ns, lambda: dp_tcx.attach(ifindex))
    assert [name for _, name in _tcx(ns, ifindex, "ingress")] == ["from_pod"]
    assert in_netns(ns, lambda: dp_tcx.attached(ifindex))
    sh("ip", "-n", ns, "link", "del", "vgh0")
    swept = tcx.TcxAttacher(links_dir=pins).sweep()
    assert sorted(n.split("-", 1)[1] for n in swept) == [f"{ifindex}-egress", f"{ifindex}-ingress"]
    assert not list(pins.iterdir())


def test_tcx_deleting_clsact_does_not_remove_enforcement(dp_tcx: Datapath, lab: dict[str, object]) -> None:
    # With clsact filters, `tc qdisc del dev X clsact` by any tool removes our programs: the pod
    # is open. A tcx link is not a qdisc's: the forged-open path must stay closed.
    ns, pod = str(lab["node"]), str(lab["pod"])
    with isolated_pod(dp_tcx, lab, (7010, 7011)):
        sh("tc", "-n", ns, "qdisc", "add", "dev", "vgh0", "clsact")
        sh("tc", "-n", ns, "qdisc", "del", "dev", "vgh0", "clsact")
        assert _connects(pod, "10.99.0.1", 7010), "control: the pod's own connection passes"
        assert not _connects(ns, "10.99.0.2", 7011), "the isolated pod must stay closed"


def test_tcx_links_held_by_one_attacher_in_two_netns_with_the_same_ifindex_stay_apart(
    dp_tcx: Datapath,
) -> None:
    # The benchmark's attacher holds links for pods on two lab nodes; their veths can have the
    # same ifindex. Each node's interface must keep its own program (a mix-up ran one node's
    # program, with the other node's maps, on the wrong pod).
    attacher = tcx.TcxAttacher()  # links held by fds, as the benchmarks use it
    with veth_pair() as one, veth_pair() as two:
        assert one.ifindex == two.ifindex
        try:
            in_netns(one.node_ns, lambda: attacher.attach(one.ifindex, *[dp_tcx.prog_fd("from_pod")] * 2))
            in_netns(two.node_ns, lambda: attacher.attach(two.ifindex, *[dp_tcx.prog_fd("to_uplink")] * 2))
            in_netns(one.node_ns, lambda: attacher.attach(one.ifindex, *[dp_tcx.prog_fd("to_pod")] * 2))
            assert [n for _, n in _tcx(one.node_ns, one.ifindex, "ingress")] == ["to_pod"]
            assert [n for _, n in _tcx(two.node_ns, two.ifindex, "ingress")] == ["to_uplink"]
            in_netns(two.node_ns, lambda: attacher.detach(two.ifindex))
            assert _tcx(two.node_ns, two.ifindex, "egress") == []
            assert [n for _, n in _tcx(one.node_ns, one.ifindex, "egress")] == ["to_pod"]
        finally:
            in_netns(one.node_ns, lambda: attacher.detach(one.ifindex))
