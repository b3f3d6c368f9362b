from __future__ import annotations

import ipaddress

import pytest

from controller.compiler.desired_state import (
    EndpointDesired,
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
    RuleRef,
)
from controller.core.identities import ID_ANY, ID_HOST, ID_REMOTE_NODE, ID_WORLD
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS, VERDICT_ALLOW, VERDICT_DENY
from controller.debug.verdict_model import (
    ALLOW_HOST,
    ALLOW_NOT_ISOLATED,
    ALLOW_POLICY,
    DROP_POLICY,
    NOT_ENFORCED,
    endpoint_verdict,
    ipcache_lookup,
    policy_lpm,
    verdict,
)

N = ipaddress.ip_network
POD_A, POD_B, CIDR_X, NS_X = 300, 301, (1 << 24) + 5, (1 << 25) + 9
ALLOW = PolicyEntryValue(VERDICT_ALLOW, 7)


def desired(
    entries: dict[PolicyEntryKey, PolicyEntryValue] | None = None, ingress: bool = True, egress: bool = False
) -> NodeDesired:
    a = EndpointDesired("x/a", POD_A, ingress, egress, "10.0.0.1", "fd00::1", entries or {})
    b = EndpointDesired("x/b", POD_B, False, False, "10.0.0.2", None, {})
    return NodeDesired(
        endpoints={"x/a": a, "x/b": b},
        ipcache={
            N("0.0.0.0/0"): (ID_WORLD, 0, 0),
            N("::/0"): (ID_WORLD, 0, 0),
            N("192.168.0.0/16"): (ID_WORLD, CIDR_X, 0),
            N("10.0.0.1/32"): (POD_A, 0, NS_X),
            N("10.0.0.2/32"): (POD_B, 0, NS_X),
            N("fd00::1/128"): (POD_A, 0, NS_X),
            N("10.0.0.254/32"): (ID_HOST, 0, 0),
            N("10.0.1.254/32"): (ID_REMOTE_NODE, 0, 0),
            N("192.168.1.7/32"): (POD_B + 1, CIDR_X, NS_X),
        },
        rules={7: RuleRef("x", "p", DIR_INGRESS, 0)},
        identities={},
    )


def test_the_ipcache_lookup_is_longest_prefix_match() -> None:
    d = desired()
    assert ipcache_lookup(d, "192.168.1.7") == (POD_B + 1, CIDR_X, NS_X)
    assert ipcache_lookup(d, "192.168.1.8") == (ID_WORLD, CIDR_X, 0)
    assert ipcache_lookup(d, "8.8.8.8") == (ID_WORLD, 0, 0)
    assert ipcache_lookup(d, "fd00::1") == (POD_A, 0, NS_X)


def test_the_policy_lookup_prefers_the_longest_port_prefix_then_any_protocol() -> None:
    e = {
        PolicyEntryKey(DIR_INGRESS, POD_B, 6, 0x1F00, 8): PolicyEntryValue(VERDICT_ALLOW, 1),
        PolicyEntryKey(DIR_INGRESS, POD_B, 6, 0x1F90, 16): PolicyEntryValue(VERDICT_ALLOW, 2),
        PolicyEntryKey(DIR_INGRESS, POD_B, 0, 0, 0): PolicyEntryValue(VERDICT_ALLOW, 3),
    }
    assert policy_lpm(e, DIR_INGRESS, POD_B, 6, 0x1F90)[1].rule_ref == 2  # type: ignore[index]
    assert policy_lpm(e, DIR_INGRESS, POD_B, 6, 0x1F42)[1].rule_ref == 1  # type: ignore[index]
    assert policy_lpm(e, DIR_INGRESS, POD_B, 17, 53)[1].rule_ref == 3  # type: ignore[index]
    assert policy_lpm(e, DIR_EGRESS, POD_B, 6, 0x1F90) is None
    assert policy_lpm(e, DIR_INGRESS, POD_A, 6, 0x1F90) is None


def test_the_own_node_is_always_allowed_even_when_isolated() -> None:
    h = endpoint_verdict(desired(), "x/a", DIR_INGRESS, "10.0.0.254", "TCP", 80)
    assert h.allowed and h.reason == ALLOW_HOST


def test_another_node_is_subject_to_policy() -> None:
    h = endpoint_verdict(desired(), "x/a", DIR_INGRESS, "10.0.1.254", "TCP", 80)
    assert not h.allowed and h.reason == DROP_POLICY and h.peer_identity == ID_REMOTE_NODE


def test_a_direction_that_is_not_isolated_allows_everything() -> None:
    h = endpoint_verdict(desired(), "x/a", DIR_EGRESS, "8.8.8.8", "UDP", 53)
    assert h.allowed and h.reason == ALLOW_NOT_ISOLATED


def test_the_peer_identity_is_tried_before_its_cidr_identity_and_then_any() -> None:
    by_id = {PolicyEntryKey(DIR_INGRESS, POD_B + 1, 6, 80, 16): PolicyEntryValue(VERDICT_ALLOW, 7)}
    by_cidr = {PolicyEntryKey(DIR_INGRESS, CIDR_X, 6, 80, 16): PolicyEntryValue(VERDICT_ALLOW, 7)}
    by_any = {PolicyEntryKey(DIR_INGRESS, ID_ANY, 6, 80, 16): PolicyEntryValue(VERDICT_ALLOW, 7)}
    for entries, level in ((by_id, POD_B + 1), (by_cidr, CIDR_X), (by_any, ID_ANY)):
        h = endpoint_verdict(desired(entries), "x/a", DIR_INGRESS, "192.168.1.7", "TCP", 80)
        assert (
            h.allowed and h.reason == ALLOW_POLICY and h.matched is not None and h.matched.identity == level
        )
        assert h.rule == RuleRef("x", "p", DIR_INGRESS, 0)
    assert not endpoint_verdict(desired(by_id), "x/a", DIR_INGRESS, "192.168.1.7", "TCP", 81).allowed


def test_only_an_allow_verdict_stops_the_identity_levels_as_in_the_kernel() -> None:
    # lib/policy.h vg_policy_try: an entry whose verdict is not ALLOW (VERDICT_DENY is reserved,
    # the compiler never writes it) does not decide; the next level's allow does.
    entries = {
        PolicyEntryKey(DIR_INGRESS, POD_B + 1, 6, 80, 16): PolicyEntryValue(VERDICT_DENY, 7),
        PolicyEntryKey(DIR_INGRESS, ID_ANY, 0, 0, 0): ALLOW,
    }
    h = endpoint_verdict(desired(entries), "x/a", DIR_INGRESS, "192.168.1.7", "TCP", 80)
    assert h.allowed and h.reason == ALLOW_POLICY
    assert h.matched == PolicyEntryKey(DIR_INGRESS, ID_ANY, 0, 0, 0)
    alone = {PolicyEntryKey(DIR_INGRESS, POD_B + 1, 6, 80, 16): PolicyEntryValue(VERDICT_DENY, 7)}
    h = endpoint_verdict(desired(alone), "x/a", DIR_INGRESS, "192.168.1.7", "TCP", 80)
    assert not h.allowed and h.reason == DROP_POLICY


def test_a_connection_needs_the_sources_egress_and_the_destinations_ingress() -> None:
    allow_b = {PolicyEntryKey(DIR_INGRESS, POD_B, 6, 80, 16): ALLOW}
    d = desired(allow_b)
    v = verdict(d, d, "x/b", "x/a", "TCP", 80)
    assert v.allowed and v.egress.reason == ALLOW_NOT_ISOLATED and v.ingress.reason == ALLOW_POLICY
    v = verdict(d, d, "x/b", "x/a", "TCP", 81)
    assert not v.allowed and v.deciding is v.ingress
    # egress isolation of the source alone blocks it too
    d2 = desired({PolicyEntryKey(DIR_INGRESS, ID_ANY, 0, 0, 0): ALLOW}, egress=True)
    v = verdict(d2, d2, "x/a", "x/b", "TCP", 80)
    assert not v.allowed and v.deciding is v.egress and v.egress.direction == DIR_EGRESS


def test_external_addresses_are_not_enforced_on_their_side() -> None:
    d = desired({PolicyEntryKey(DIR_INGRESS, CIDR_X, 0, 0, 0): ALLOW})
    v = verdict(None, d, "192.168.5.5", "x/a", "TCP", 80)
    assert v.allowed and v.egress.reason == NOT_ENFORCED and v.egress.endpoint is None
    assert not verdict(None, d, "172.16.0.1", "x/a", "TCP", 80).allowed
    assert verdict(d, None, "x/b", "1.1.1.1", "TCP", 80).allowed


def test_a_pod_ip_stands_for_its_endpoint_and_sets_the_family() -> None:
    d = desired()
    v = verdict(d, d, "x/b", "10.0.0.1", "TCP", 80)
    assert not v.allowed and v.ingress.endpoint == "x/a"
    v6 = verdict(None, d, "fd00::9", "x/a", "TCP", 80)
    assert v6.ingress.peer == "fd00::9"


def test_unknown_endpoints_missing_families_and_mixed_families_are_errors() -> None:
    d = desired()
    with pytest.raises(LookupError):
        verdict(d, d, "x/nope", "x/a", "TCP", 80)
    with pytest.raises(LookupError):
        verdict(d, d, "x/a", "x/b", "TCP", 80, family=6)  # x/b has no IPv6
    with pytest.raises(ValueError):
        verdict(None, d, "10.1.1.1", "fd00::1", "TCP", 80)
    with pytest.raises(ValueError):
        verdict(d, d, "x/a", "x/b", "GRE", 80)
