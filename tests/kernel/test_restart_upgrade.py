"""Agent restarts and program upgrades at the datapath level: a second Datapath for the same node
(what a restarted or upgraded agent creates) reuses the pinned maps and conntrack, its first sync
changes nothing, and attaching its programs replaces the running ones in place on every veth."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from controller.bench.testrun import run
from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue
from controller.core.verdicts import DIR_EGRESS
from controller.datapath import abi, bpfsys, codecs, loader, readback
from controller.datapath.abi import Reason
from controller.datapath.node import Datapath
from tests.support import packets as P
from tests.support.kernel import EP, ID_B, POD_A, POD_B, TC_ACT_OK, desired_node
from tests.support.netns_util import VethPair, in_netns, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.bcc]

UPGRADE = ("-DVG_UPGRADE_MARKER=2",)
ALLOW = PolicyEntryValue(verdict=1, rule_ref=99)
PEER_ID = 4000


def _map_ids(d: Datapath) -> dict[str, int]:
    return {name: bpfsys.map_id(m.fd) for name, m in d.maps.items()}


def test_a_restarted_datapath_reuses_every_pinned_map_and_its_first_sync_changes_nothing(
    node: str, opened: Callable[..., Datapath]
) -> None:
    old = opened(node)
    want = desired_node({PolicyEntryKey(0, ID_B, P.TCP, 80, 16): ALLOW})
    first = old.sync(want, {"x/a": EP})
    syn = P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80))
    assert old.maps["vg_ct"].count() == 0
    assert run(old.prog_fd("to_pod"), syn, ifindex=EP).retval == TC_ACT_OK
    new = opened(node, UPGRADE)
    assert _map_ids(new) == _map_ids(old), "a restart must open the same kernel maps, not new ones"
    again = new.sync(want, {"x/a": EP})
    assert not again.changed and again.revision == first.revision, "nothing changed: no revision bump"
    ct = new.dump().ct
    assert len(ct) == 1 and ct[0].marker == 0, "the old program's flow survives in conntrack"
    ack = P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))
    before = new.counters().get((EP, int(Reason.ALLOW_CT), 0), (0, 0))[0]
    assert run(new.prog_fd("to_pod"), ack, ifindex=EP).retval == TC_ACT_OK
    assert new.counters()[(EP, int(Reason.ALLOW_CT), 0)][0] == before + 1, "judged by conntrack"
    assert run(new.prog_fd("to_pod"), P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40001, 80)), ifindex=EP).retval == 0
    markers = sorted(e.marker for e in new.dump().ct)
    assert markers == [0, 2], "a new flow is created by the upgraded program"


def test_an_upgraded_build_has_a_different_program_and_the_pins_name_the_newest_load(
    node: str, opened: Callable[..., Datapath]
) -> None:
    old = opened(node)
    new = opened(node, UPGRADE)
    for name in loader.PROGRAMS:
        if name != "from_uplink":  # the only program that creates no conntrack entry
            assert new.prog_id(name).tag != old.prog_id(name).tag, f"{name}: the marker must change the code"
        fd = bpfsys.obj_get(str(new.pin_dir / f"prog_{name}"))
        try:
            assert bpfsys.prog_id(fd) == new.prog_id(name)
        finally:
            os.close(fd)


def test_a_pinned_map_with_another_layout_is_named_and_a_pin_set_aside_by_a_load_that_died_is_recovered(
    dp: Datapath,
) -> None:
    pin_dir = loader.pin_dir_for(f"test-layout-{uuid.uuid4().hex[:8]}", "/sys/fs/bpf/vethguard")
    pin_dir.mkdir(parents=True)
    try:
        # vg_frag's fd pinned under the name vg_ct: the sizes an older build might have left.
        bpfsys.obj_pin(dp.maps["vg_frag"].fd, str(pin_dir / "vg_ct"))
        assert set(loader.incompatible_pins(pin_dir)) == {"vg_ct"}
        assert "this version needs" in loader.incompatible_pins(pin_dir)["vg_ct"]
        # A load that died after moving pins aside: put back where nothing replaced them, dropped
        # where a new map was pinned.
        os.rename(pin_dir / "vg_ct", pin_dir / "replaced_vg_ct")
        bpfsys.obj_pin(dp.maps["vg_frag"].fd, str(pin_dir / "replaced_vg_frag"))
        bpfsys.obj_pin(dp.maps["vg_frag"].fd, str(pin_dir / "vg_frag"))
        loader.recover_set_aside(pin_dir)
        assert sorted(os.listdir(pin_dir)) == ["vg_ct", "vg_frag"]
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)


def test_loading_a_new_program_set_leaves_the_attached_filters_alone_until_attach_replaces_them(
    node: str, opened: Callable[..., Datapath]
) -> None:
    old = opened(node)
    with veth_pair() as v:
        in_netns(v.node_ns, lambda: old.attach(v.ifindex))
        running = {n: old.prog_id(n).id for n in ("from_pod", "to_pod")}
        assert in_netns(v.node_ns, lambda: old.attached_progs(v.ifindex)) == running
        new = opened(node, UPGRADE)
        assert in_netns(v.node_ns, lambda: new.attached_progs(v.ifindex)) == running, "load must not touch tc"
        in_netns(v.node_ns, lambda: new.attach(v.ifindex))
        upgraded = {n: new.prog_id(n).id for n in ("from_pod", "to_pod")}
        # Exactly one filter of ours per hook (attached_progs gives None otherwise), now the new one.
        assert in_netns(v.node_ns, lambda: new.attached_progs(v.ifindex)) == upgraded


def _policy_for_udp(d: Datapath, v: VethPair, port: int) -> None:
    """The pod is egress-isolated and may send UDP to the node-side address (identity PEER_ID)."""
    k, val = codecs.encode_ipcache(readback.ipnet(f"{v.node_ip}/32"), PEER_ID, 0)
    d.maps["vg_ipcache4"].update(k, val)
    k, val = codecs.encode_endpoint(v.ifindex, 256, abi.EP_F_EGRESS_ISOLATED, v.pod_ip, None)
    d.maps["vg_endpoints"].update(k, val)
    pk, pv = codecs.encode_policy(v.ifindex, PolicyEntryKey(DIR_EGRESS, PEER_ID, P.UDP, port, 16), ALLOW)
    d.maps["vg_policy"].update(pk, pv)


def test_every_packet_sent_while_programs_are_swapped_back_and_forth_is_judged_by_one_of_them(
    node: str, opened: Callable[..., Datapath]
) -> None:
    """A swap with a gap (delete then add) would let packets through unjudged: the per-reason
    counters of the pinned map would then count fewer packets than the pod sent."""
    old, new = opened(node), opened(node, UPGRADE)
    port, total = 7100, 3000
    with veth_pair() as v:
        _policy_for_udp(old, v, port)
        in_netns(v.node_ns, lambda: old.attach(v.ifindex))
        receiver = in_netns(v.node_ns, lambda: _udp_socket(v.node_ip, port))
        sender = in_netns(v.pod_ns, lambda: _udp_socket(v.pod_ip, 0))
        received = [0]
        done = threading.Event()

        def receive() -> None:
            receiver.settimeout(0.5)
            while True:
                try:
                    receiver.recv(64)
                except TimeoutError:
                    if done.is_set():
                        return
                    continue
                received[0] += 1

        def send() -> None:
            for i in range(total):
                sender.sendto(i.to_bytes(4, "big"), (v.node_ip, port))
                if i % 10 == 0:
                    time.sleep(0.001)  # spread the packets over the swaps

        rx = threading.Thread(target=receive)
        tx = threading.Thread(target=send)
        rx.start()
        tx.start()
        swaps = 0
        try:
            while tx.is_alive():
                d = new if swaps % 2 == 0 else old
                in_netns(v.node_ns, lambda d=d: d.attach(v.ifindex))  # type: ignore[misc]
                swaps += 1
        finally:
            tx.join()
            time.sleep(0.3)
            done.set()
            rx.join()
            receiver.close()
            sender.close()
        judged = sum(
            new.counters().get((v.ifindex, int(r), DIR_EGRESS), (0, 0))[0]
            for r in (Reason.ALLOW_POLICY, Reason.ALLOW_CT)
        )
        print(f"\n{swaps} program swaps during {total} packets; judged {judged}, received {received[0]}")
        assert swaps >= 10, "the swaps must overlap the traffic"
        assert judged == total, "a packet passed while no program was attached"
        assert received[0] == total, "no packet may be lost by a swap"


def _udp_socket(addr: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((addr, port))
    return s
