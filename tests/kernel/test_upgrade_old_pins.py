"""An upgrade over the pins an agent of an earlier version left: that version's programs compiled
from its own bpf/ sources (git archive), pinned under the node's directory as its agent pins them,
its maps holding a policy. Since then the Calico tier widened vg_policy's value from 24 to 44
bytes, namespace identities widened the ipcache value from 8 to 12 bytes, and vg_hosteps,
vg_failsafe and vg_evlost were added. The current loader must start over them: new maps created,
the incompatible ones replaced, every compatible one (conntrack included)
reused, the old policy enforced without a moment of failing open, no stale pin left."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.bench.bpf_parts import sources_at
from controller.bench.testrun import run
from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue
from controller.core.errors import VethguardError
from controller.core.verdicts import DIR_INGRESS
from controller.datapath import abi, bpfsys, codecs, encoding, loader, readback
from controller.datapath.attach import Attacher
from controller.datapath.node import Datapath
from tests.support import packets as P
from tests.support.kernel import (
    EP,
    ID_A,
    ID_B,
    POD_A,
    POD_B,
    TC_ACT_OK,
    TC_ACT_SHOT,
    build_tail_ids,
    desired_node,
)
from tests.support.netns_util import in_netns, sh, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.bcc]

PIN_ROOT = "/sys/fs/bpf/vethguard"
PREVIOUS = "b67737f^"  # the commit before the Calico tier (policy_value 24 -> 44 bytes)
OLD_POLICY_VALUE = 24
OLD_IPCACHE_VALUE = 8  # (identity, cidr_identity), before ns_identity
REPLACED = ("vg_ipcache4", "vg_ipcache6", "vg_policy")
ALLOWED = PolicyEntryKey(DIR_INGRESS, ID_B, P.TCP, 80, 16)
ALLOW = PolicyEntryValue(verdict=1, rule_ref=99)
NEW_MAPS = ("vg_hosteps", "vg_failsafe", "vg_evlost")


def syn(sport: int, dport: int = 80) -> bytes:
    return P.ipv4(POD_B, POD_A, P.TCP, P.tcp(sport, dport))


@dataclass
class Previous:
    """The earlier version's pins: its programs (as if still attached) and its maps."""

    pin_dir: Path
    fds: dict[str, int]
    map_ids: dict[str, int] = field(default_factory=dict)

    def to_pod(self, frame: bytes) -> int:
        return run(self.fds["to_pod"], frame, ifindex=EP).retval


def _map_ids(pin_dir: Path) -> dict[str, int]:
    """Kernel id of every map pinned in pin_dir."""
    out = {}
    for name in (n for n in os.listdir(pin_dir) if n.startswith("vg_")):
        fd = bpfsys.obj_get(str(pin_dir / name))
        try:
            out[name] = bpfsys.map_id(fd)
        finally:
            os.close(fd)
    return out


def _write_previous_state(pin_dir: Path) -> None:
    """The earlier agent's sync, by hand: an ingress-isolated endpoint allowing TCP 80 from B
    (vg_policy and ipcache values of that version: the first 24 and 8 bytes of today's)."""
    maps = {
        n: bpfsys.BpfMap.open_pinned(str(pin_dir / n)) for n in ("vg_endpoints", "vg_ipcache4", "vg_policy")
    }
    try:
        assert maps["vg_policy"].value_size == OLD_POLICY_VALUE
        assert maps["vg_ipcache4"].value_size == OLD_IPCACHE_VALUE
        assert not set(NEW_MAPS) & set(os.listdir(pin_dir))
        flags = encoding.endpoint_flags(True, False)
        maps["vg_endpoints"].update(*codecs.encode_endpoint(EP, ID_A, flags, POD_A, None))
        for prefix, ident in ((f"{POD_B}/32", ID_B), (f"{POD_A}/32", ID_A), ("0.0.0.0/0", 2)):
            k, v = codecs.encode_ipcache(readback.ipnet(prefix), ident, 0)
            maps["vg_ipcache4"].update(k, v[:OLD_IPCACHE_VALUE])
        k, v = codecs.encode_policy(EP, ALLOWED, ALLOW)
        maps["vg_policy"].update(k, v[:OLD_POLICY_VALUE])
    finally:
        for m in maps.values():
            m.close()


@pytest.fixture
def previous(node: str) -> Iterator[Previous]:
    pin_dir = loader.pin_dir_for(node, PIN_ROOT)
    pin_dir.mkdir(parents=True)
    with sources_at(PREVIOUS) as src:
        b, fds = loader.compile_programs("vethguard.c", pin_dir, ("from_pod", "to_pod"), src_dir=src)
    try:
        for name, fd in fds.items():
            bpfsys.obj_pin(fd, str(pin_dir / f"prog_{name}"))
        _write_previous_state(pin_dir)
        old = Previous(pin_dir, fds, _map_ids(pin_dir))
        assert old.to_pod(syn(1000)) == TC_ACT_OK and old.to_pod(syn(1000, 81)) == TC_ACT_SHOT
        yield old
    finally:
        b.cleanup()


def _pins(pin_dir: Path) -> set[str]:
    return set(os.listdir(pin_dir))


def test_an_upgrade_over_earlier_pins_replaces_the_changed_maps_adds_the_new_ones_and_keeps_conntrack(
    node: str, previous: Previous, opened: Callable[..., Datapath]
) -> None:
    dp = opened(node)
    assert sorted(dp.replaced_maps) == sorted(REPLACED)
    expected = {
        *loader.EXPECTED_LAYOUT,
        *abi.RING_NAMES,
        *(f"prog_{p}" for p in loader.PROGRAMS),
        dp.build_dir.name,
    }
    assert _pins(previous.pin_dir) == expected, "every map of this version, no pin set aside or left over"
    assert dp.maps["vg_policy"].value_size == 44
    ids = _map_ids(previous.pin_dir)
    assert dp.maps["vg_ipcache4"].value_size == 12
    for name in REPLACED:
        assert ids[name] != previous.map_ids[name], f"{name}: a new map, not the narrower one"
    for name, old_id in previous.map_ids.items():
        if name not in REPLACED:
            assert ids[name] == old_id, f"{name}: same layout, so the same kernel map is reused"
    # The earlier programs, still attached until the agent re-attaches, enforce with their own maps.
    assert previous.to_pod(syn(1001)) == TC_ACT_OK and previous.to_pod(syn(1001, 81)) == TC_ACT_SHOT
    # The new programs before the first sync: the endpoint is isolated, its policy map empty.
    new_to_pod = dp.prog_fd("to_pod")
    assert run(new_to_pod, syn(1002), ifindex=EP).retval == TC_ACT_SHOT, "fails closed, never open"
    # to_pod's tail-call targets (vg_tail, new here) wait for the first sync like its attaching.
    assert dp.tail_programs() == dict.fromkeys(loader.TAIL_PROGRAMS)
    dp.sync(desired_node({ALLOWED: ALLOW}), {"x/a": EP})
    assert run(new_to_pod, syn(1003), ifindex=EP).retval == TC_ACT_OK
    assert dp.tail_programs() == build_tail_ids(dp)
    assert run(new_to_pod, syn(1003, 81), ifindex=EP).retval == TC_ACT_SHOT
    ack = P.ipv4(POD_B, POD_A, P.TCP, P.tcp(1000, 80, P.ACK))
    assert run(new_to_pod, ack, ifindex=EP).retval == TC_ACT_OK, "the earlier program's flow is still tracked"
    assert any(e.sport == 1000 for e in dp.dump().ct)


def test_a_failed_load_over_an_earlier_versions_pins_leaves_them_as_they_were(
    node: str, previous: Previous, opened: Callable[..., Datapath]
) -> None:
    before = _pins(previous.pin_dir)
    with pytest.raises(VethguardError, match=r"compiling vethguard\.c failed"):
        opened(node, ("-DVG_UPGRADE_MARKER=(",))  # does not compile
    assert _pins(previous.pin_dir) == before
    policy = bpfsys.BpfMap.open_pinned(str(previous.pin_dir / "vg_policy"))
    try:
        assert bpfsys.map_id(policy.fd) == previous.map_ids["vg_policy"]
        assert policy.value_size == OLD_POLICY_VALUE
    finally:
        policy.close()
    assert previous.to_pod(syn(1004)) == TC_ACT_OK and previous.to_pod(syn(1004, 81)) == TC_ACT_SHOT


def test_a_veth_running_earlier_programs_keeps_them_until_the_replaced_map_is_synced_a_new_one_fails_closed(
    node: str, previous: Previous, opened: Callable[..., Datapath]
) -> None:
    with veth_pair() as v:
        old_ids = {n: bpfsys.prog_id(fd).id for n, fd in previous.fds.items()}
        attacher = Attacher()
        in_netns(
            v.node_ns, lambda: attacher.attach(v.ifindex, previous.fds["from_pod"], previous.fds["to_pod"])
        )
        dp = opened(node)
        new_ids = {n: dp.prog_id(n).id for n in ("from_pod", "to_pod")}
        in_netns(v.node_ns, lambda: dp.attach(v.ifindex))  # the agent's first pass attaches, then syncs
        assert in_netns(v.node_ns, lambda: dp.attached_progs(v.ifindex)) == old_ids, "not on an empty map"
        # An interface without programs (a pod's veth created meanwhile) gets the new ones at once.
        sh("ip", "-n", v.node_ns, "link", "add", "vgfresh", "type", "veth", "peer", "name", "vgfresh-p")
        fresh = in_netns(v.node_ns, lambda: socket.if_nametoindex("vgfresh"))
        in_netns(v.node_ns, lambda: dp.attach(fresh))
        assert in_netns(v.node_ns, lambda: dp.attached_progs(fresh)) == new_ids, "fails closed at once"
        in_netns(v.node_ns, lambda: dp.sync(desired_node({ALLOWED: ALLOW}), {"x/a": v.ifindex}))
        assert in_netns(v.node_ns, lambda: dp.attached_progs(v.ifindex)) == new_ids, "swapped after the sync"
        in_netns(v.node_ns, lambda: dp.attach(v.ifindex))
        assert in_netns(v.node_ns, lambda: dp.attached_progs(v.ifindex)) == new_ids
