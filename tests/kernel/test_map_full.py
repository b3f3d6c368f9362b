"""Map overflow: a sync that cannot fit an endpoint's entries leaves that endpoint failed closed
(PENDING), raises MapFullError naming map and pod, and the next sync with room recovers it.

The maps are built tiny with compiler flags (VG_MAX_POLICY, VG_MAX_IPCACHE) on a node of their own.
"""

from __future__ import annotations

import errno
import ipaddress
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from controller.bench.testrun import run
from controller.compiler.desired_state import EndpointDesired, NodeDesired, PolicyEntryKey, PolicyEntryValue
from controller.datapath import abi, bpfsys, codecs
from controller.datapath.abi import Reason
from controller.datapath.node import Datapath
from controller.datapath.sync import MapFullError
from tests.support import packets as P
from tests.support.kernel import EP, ID_B, POD_A, POD_B, TC_ACT_OK, TC_ACT_SHOT

pytestmark = [pytest.mark.root, pytest.mark.bcc]

POLICY_MAX = 64
IPCACHE_MAX = 16
OTHER = 2  # a second endpoint's ifindex (never sees packets here)
ALLOW = PolicyEntryValue(verdict=1, rule_ref=7)


@pytest.fixture(scope="module")
def tiny() -> Iterator[Datapath]:
    node = f"test-full-{uuid.uuid4().hex[:10]}"
    try:
        d = Datapath(
            node=node, extra_cflags=(f"-DVG_MAX_POLICY={POLICY_MAX}", f"-DVG_MAX_IPCACHE={IPCACHE_MAX}")
        )
    except BaseException:
        Datapath.remove_pins(node)
        raise
    try:
        yield d
    finally:
        d.close()
        Datapath.remove_pins(node)


@pytest.fixture
def dp(tiny: Datapath) -> Datapath:
    for name in ("vg_endpoints", "vg_policy", "vg_ipcache4", "vg_ipcache6", "vg_ct", "vg_counters"):
        tiny.maps[name].clear()
    return tiny


def _ports(n: int, first: int = 1000) -> dict[PolicyEntryKey, PolicyEntryValue]:
    """n exact-port ingress entries from peer B (80 is always the first)."""
    keys = [PolicyEntryKey(0, ID_B, P.TCP, 80, 16)]
    keys += [PolicyEntryKey(0, ID_B, P.TCP, first + i, 16) for i in range(n - 1)]
    return dict.fromkeys(keys, ALLOW)


def _desired(a_entries: int, b_entries: int = 5, extra_prefixes: int = 0) -> NodeDesired:
    def ep(pod: str, n: int) -> EndpointDesired:
        return EndpointDesired(pod, 256, True, False, POD_A, None, _ports(n, 1000 if pod == "x/a" else 2000))

    ipcache: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, tuple[int, int, int]] = {
        ipaddress.ip_network(f"{POD_B}/32"): (ID_B, 0, 0),
        ipaddress.ip_network(f"{POD_A}/32"): (256, 0, 0),
        ipaddress.ip_network("0.0.0.0/0"): (2, 0, 0),
    }
    for i in range(extra_prefixes):
        ipcache[ipaddress.ip_network(f"198.18.{i}.0/24")] = (2, (1 << 24) + i, 0)
    return NodeDesired(
        endpoints={"x/a": ep("x/a", a_entries), "x/b": ep("x/b", b_entries)},
        ipcache=ipcache,
        rules={},
        identities={},
    )


PODS = {"x/a": EP, "x/b": OTHER}


def _flags(d: Datapath) -> dict[int, int]:
    return {i: e.flags for i, e in d.dump().endpoints.items()}


def _syn(sport: int, dport: int = 80) -> bytes:
    return P.ipv4(POD_B, POD_A, P.TCP, P.tcp(sport, dport))


def test_capacity_reports_the_kernel_max_entries_and_entry_counts_the_fill(dp: Datapath) -> None:
    cap = dp.capacity()
    assert cap["vg_policy"] == POLICY_MAX and cap["vg_ipcache4"] == IPCACHE_MAX
    assert cap["vg_endpoints"] == dp.maps["vg_endpoints"].max_entries > 0
    dp.sync(_desired(10), PODS)
    counts = dp.entry_counts()
    assert set(counts) == set(cap)
    assert counts["vg_policy"] == 15 and counts["vg_endpoints"] == 2 and counts["vg_ipcache4"] == 3


def test_an_endpoint_whose_entries_do_not_fit_is_left_pending_and_the_others_are_untouched(
    dp: Datapath,
) -> None:
    dp.sync(_desired(10), PODS)
    assert run(dp.prog_fd("to_pod"), _syn(40000), ifindex=EP).retval == TC_ACT_OK  # established below
    with pytest.raises(MapFullError) as info:
        dp.sync(_desired(POLICY_MAX + 10), PODS)
    err = info.value
    assert (err.map_name, err.endpoint, err.endpoints) == ("vg_policy", "x/a", ("x/a",))
    assert "vg_policy is full" in str(err) and err.result.skipped > 0
    flags = _flags(dp)
    assert flags[EP] & abi.EP_F_PENDING, "the endpoint that did not fit fails closed"
    assert not flags[OTHER] & abi.EP_F_PENDING, "an endpoint whose entries fitted keeps its policy"
    assert dp.entry_counts()["vg_policy"] <= POLICY_MAX
    # Neither new flows nor the flow established before get through a pending endpoint.
    assert run(dp.prog_fd("to_pod"), _syn(40001), ifindex=EP).retval == TC_ACT_SHOT
    ack = P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))
    assert run(dp.prog_fd("to_pod"), ack, ifindex=EP).retval == TC_ACT_SHOT
    counters = dp.counters()
    assert counters[(EP, int(Reason.DROP_PENDING), 0)][0] == 1
    assert counters[(EP, int(Reason.DROP_REVOKED), 0)][0] == 1


def test_a_retry_that_still_does_not_fit_keeps_the_endpoint_pending(dp: Datapath) -> None:
    dp.sync(_desired(10), PODS)
    for _ in range(2):
        with pytest.raises(MapFullError):
            dp.sync(_desired(POLICY_MAX + 10), PODS)
        assert _flags(dp)[EP] & abi.EP_F_PENDING


def test_the_endpoint_recovers_when_its_entries_fit_again_and_its_flow_resumes(dp: Datapath) -> None:
    dp.sync(_desired(10), PODS)
    assert run(dp.prog_fd("to_pod"), _syn(40000), ifindex=EP).retval == TC_ACT_OK
    with pytest.raises(MapFullError):
        dp.sync(_desired(POLICY_MAX + 10), PODS)
    result = dp.sync(_desired(40), PODS)
    assert not result.full
    assert _flags(dp) == {EP: abi.EP_F_INGRESS_ISOLATED, OTHER: abi.EP_F_INGRESS_ISOLATED}
    assert dp.entry_counts()["vg_policy"] == 45
    ack = P.ipv4(POD_B, POD_A, P.TCP, P.tcp(40000, 80, P.ACK))
    assert run(dp.prog_fd("to_pod"), ack, ifindex=EP).retval == TC_ACT_OK, "the revoked flow is allowed again"
    assert run(dp.prog_fd("to_pod"), _syn(40002, 1038), ifindex=EP).retval == TC_ACT_OK
    assert run(dp.prog_fd("to_pod"), _syn(40003, 1039), ifindex=EP).retval == TC_ACT_SHOT


def test_a_full_ipcache_fails_every_endpoint_closed_until_the_prefixes_fit(dp: Datapath) -> None:
    """A missing except-prefix could widen an ipBlock rule of any endpoint: all fail closed."""
    dp.sync(_desired(3), PODS)
    with pytest.raises(MapFullError) as info:
        dp.sync(_desired(3, extra_prefixes=IPCACHE_MAX), PODS)
    assert info.value.map_name == "vg_ipcache4" and info.value.endpoints == ("x/a", "x/b")
    assert all(f & abi.EP_F_PENDING for f in _flags(dp).values())
    dp.sync(_desired(3, extra_prefixes=4), PODS)
    assert not any(f & abi.EP_F_PENDING for f in _flags(dp).values())
    assert run(dp.prog_fd("to_pod"), _syn(40010), ifindex=EP).retval == TC_ACT_OK


PROFILE = 0x80000000 | 77  # TIER_PROFILE_BIT | n


def _profiled(profile_entries: int) -> NodeDesired:
    """x/a and x/b share one tier profile of `profile_entries` Admin Deny entries (peer B);
    x/c (ifindex 3) has none."""
    deny = PolicyEntryValue(verdict=0, rule_ref=0, admin=2, admin_rank=0, admin_ref=9)
    profile = {PolicyEntryKey(0, ID_B, P.TCP, 3000 + i, 16): deny for i in range(profile_entries)}

    def ep(pod: str, ip: str, tiered: bool) -> EndpointDesired:
        return EndpointDesired(
            pod,
            256,
            True,
            False,
            ip,
            None,
            _ports(3, 1000),
            ingress_tiered=tiered,
            tier_profile=PROFILE if tiered else 0,
        )

    return NodeDesired(
        endpoints={
            "x/a": ep("x/a", POD_A, True),
            "x/b": ep("x/b", "10.244.1.30", True),
            "x/c": ep("x/c", "10.244.1.31", False),
        },
        ipcache={
            ipaddress.ip_network(f"{POD_B}/32"): (ID_B, 0, 0),
            ipaddress.ip_network("0.0.0.0/0"): (2, 0, 0),
        },
        rules={},
        identities={},
        tier_profiles={PROFILE: profile},
    )


def test_a_tier_profile_that_does_not_fit_closes_every_endpoint_that_uses_it(dp: Datapath) -> None:
    pods = {"x/a": EP, "x/b": OTHER, "x/c": 3}
    dp.sync(_profiled(5), pods)
    assert run(dp.prog_fd("to_pod"), _syn(40020, 3001), ifindex=EP).retval == TC_ACT_SHOT  # the Admin Deny
    assert run(dp.prog_fd("to_pod"), _syn(40021, 80), ifindex=EP).retval == TC_ACT_OK
    with pytest.raises(MapFullError) as info:
        dp.sync(_profiled(POLICY_MAX + 5), pods)
    assert info.value.map_name == "vg_policy"
    assert set(info.value.endpoints) == {"x/a", "x/b"}
    flags = _flags(dp)
    assert flags[EP] & abi.EP_F_PENDING and flags[OTHER] & abi.EP_F_PENDING
    assert not flags[3] & abi.EP_F_PENDING
    # a new flow the profile would have denied does not get through a closed endpoint
    assert run(dp.prog_fd("to_pod"), _syn(40022, 3070), ifindex=EP).retval == TC_ACT_SHOT
    dp.sync(_profiled(5), pods)
    assert not any(f & abi.EP_F_PENDING for f in _flags(dp).values())


def _entries(n: int) -> tuple[list[bytes], list[bytes]]:
    keys, values = [], []
    for k, v in _ports(n).items():
        kb, vb = codecs.encode_policy(EP, k, v)
        keys.append(kb)
        values.append(vb)
    return keys, values


def test_batch_operations_write_and_delete_in_order_and_stop_at_a_missing_key(dp: Datapath) -> None:
    m = dp.maps["vg_policy"]
    keys, values = _entries(20)
    m.update_batch(keys, values)
    assert m.items() == dict(zip(keys, values, strict=True))
    missing = codecs.encode_policy(EP, PolicyEntryKey(0, ID_B, P.UDP, 9, 16), ALLOW)[0]
    with pytest.raises(bpfsys.BatchError) as info:
        m.delete_batch([keys[0], keys[1], missing, keys[2]])
    assert (info.value.errno, info.value.done) == (errno.ENOENT, 2)
    assert sorted(m.items()) == sorted(keys[2:])


def test_a_sync_in_batches_fails_the_same_endpoint_closed_as_one_by_one(
    dp: Datapath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vg_policy's runs of operations go to the kernel in BPF_MAP_UPDATE_BATCH calls; when the
    map fills in the middle of one, the outcome is the one-by-one outcome: same entries, same
    endpoint failed closed, same count skipped."""
    real_bpf, batches = bpfsys.bpf, []

    def counting(cmd: int, attr: Any) -> int:
        batches.extend([cmd] if cmd in (bpfsys.BPF_MAP_UPDATE_BATCH, bpfsys.BPF_MAP_DELETE_BATCH) else [])
        return real_bpf(cmd, attr)

    monkeypatch.setattr(bpfsys, "bpf", counting)
    outcomes = []
    for batched in (True, False):
        for name in ("vg_endpoints", "vg_policy", "vg_ipcache4", "vg_ipcache6"):
            dp.maps[name].clear()
        dp.maps["vg_policy"].no_batch = not batched
        batches.clear()
        dp.sync(_desired(10), PODS)
        with pytest.raises(MapFullError) as info:
            dp.sync(_desired(POLICY_MAX + 10), PODS)
        outcomes.append(
            (dp.maps["vg_policy"].items(), _flags(dp), info.value.result.skipped, info.value.endpoints)
        )
        assert bool(batches) == batched
    dp.maps["vg_policy"].no_batch = False
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1][EP] & abi.EP_F_PENDING and outcomes[0][2] > 0
