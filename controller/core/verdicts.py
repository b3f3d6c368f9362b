"""Directions and policy verdicts, as the compiler writes them and the datapath reads them
(bpf/lib/structs.h; tests/unit/test_map_layout.py checks them against the C headers)."""

from __future__ import annotations

DIR_INGRESS = 0  # traffic entering the pod (tc egress on the host-side veth)
DIR_EGRESS = 1  # traffic leaving the pod (tc ingress on the host-side veth)
DIRECTION_NAMES = {DIR_INGRESS: "ingress", DIR_EGRESS: "egress"}

VERDICT_ALLOW = 1
VERDICT_DENY = 2

# The action of a ClusterNetworkPolicy tier's first matching rule in a policy entry
TIER_NONE = 0
TIER_ACCEPT = 1
TIER_DENY = 2
TIER_PASS = 3
# policy_key.ep_id of a tier profile's entries (bpf/lib/structs.h): never an ifindex
TIER_PROFILE_BIT = 0x80000000
TIER_ACTION_NAMES = {TIER_ACCEPT: "Accept", TIER_DENY: "Deny", TIER_PASS: "Pass"}
