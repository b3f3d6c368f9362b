"""Calico host endpoints in the debug views: the vg_hosteps / vg_failsafe entries of a node
translated (`vethguard bpf hosteps`), the names `observe` gives events of a host endpoint, and
which host endpoint an interface carries.

A host endpoint's events carry the interface's ifindex as ep_id (bpf/vethguard.c vg_hep_handle);
pods' ep_ids are their host-side veths' ifindexes, so in one node's network namespace the two
never collide. Such an event's endpoint is named "node/<node>:<interface>" (the interface name
read from the node's network namespace; "if<N>" when it cannot be read).

Pure except read_links (netlink, inside a lab node's network namespace).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.compiler.clusterview import ClusterView, rule_policy
from controller.compiler.desired_state import (
    HostEndpointDesired,
    NodeDesired,
    PolicyEntryKey,
    PolicyEntryValue,
)
from controller.core.net import PROTOCOL_NUMBERS
from controller.core.verdicts import DIR_EGRESS, DIR_INGRESS, TIER_NONE
from controller.datapath import abi, codecs
from controller.debug import hostep_model
from controller.debug.hostep_model import HepFlags

Row = dict[str, Any]
PROTO_NAMES = {n: name for name, n in PROTOCOL_NUMBERS.items()}

# The reasons only a host endpoint reports, and the policy set each names
HEP_REASON_SETS = {
    "ALLOW_FAILSAFE": hostep_model.SET_FAILSAFE,
    "ALLOW_PREDNAT": hostep_model.SET_PREDNAT,
    "DROP_PREDNAT": hostep_model.SET_PREDNAT,
    "DROP_HOSTEP_END": hostep_model.SET_DEFAULT_DENY,
    "ALLOW_HOSTEP": None,  # normal, applyOnForward or unpoliced: from the traffic (hep_policy_set)
    "DROP_HOSTEP": None,
}


@dataclass(frozen=True)
class Link:
    """An interface of a node's network namespace."""

    name: str
    addresses: tuple[str, ...] = ()


def read_links(netns: str | None) -> dict[int, Link]:
    """ifindex -> Link of the network namespace `netns` (a lab node's), or of this one."""
    from controller.datapath.netlink import IPRoute

    def read() -> dict[int, Link]:
        with IPRoute() as ipr:
            names = {int(x["index"]): str(x.get_attr("IFLA_IFNAME")) for x in ipr.get_links()}
            addrs: dict[int, list[str]] = {}
            for a in ipr.get_addr():
                addrs.setdefault(int(a["index"]), []).append(str(a.get_attr("IFA_ADDRESS")))
        return {i: Link(n, tuple(addrs.get(i, ()))) for i, n in names.items()}

    if netns is None:
        return read()
    from controller.lab import netns as lab_netns

    return lab_netns.run_in_netns(netns, read)


# -- the maps ----------------------------------------------------------------------------------


def decode_hosteps(items: Mapping[bytes, bytes]) -> dict[int, HepFlags]:
    """vg_hosteps: ifindex -> the entry (hostep_info)."""
    out = {}
    for kb, vb in items.items():
        v = abi.HostepInfo.from_bytes(vb)
        out[int.from_bytes(kb[:4], "little")] = HepFlags(
            bool(v.flags & abi.HEP_F_PREDNAT),
            bool(v.flags & abi.HEP_F_INGRESS_FWD),
            bool(v.flags & abi.HEP_F_EGRESS_FWD),
            int(v.profile_host),
            int(v.profile_fwd),
            int(v.profile_pre),
        )
    return out


def decode_failsafe(items: Mapping[bytes, bytes]) -> list[tuple[int, int, int]]:
    """vg_failsafe: sorted (direction, protocol, port)."""
    out = []
    for kb in items:
        k = abi.FailsafeKey.from_bytes(kb)
        out.append((int(k.dir), int(k.proto), codecs.from_be16(k.port)))
    return sorted(out)


def flag_names(hep: HepFlags) -> list[str]:
    return [
        n
        for on, n in (
            (hep.pre_dnat, "preDNAT"),
            (hep.ingress_fwd, "ingress-forward"),
            (hep.egress_fwd, "egress-forward"),
        )
        if on
    ]


def failsafe_text(ports: Sequence[tuple[int, int, int]], direction: int) -> list[str]:
    return [f"{PROTO_NAMES.get(p, str(p))}/{port}" for d, p, port in ports if d == direction]


# -- which host endpoint is where -----------------------------------------------------------------


def _on(hep: HostEndpointDesired, link: Link | None) -> bool:
    """controller/datapath/uplink.py host_endpoint_ifindexes for one (uplink) interface."""
    if hep.interface == "*":
        return True
    if link is None:
        return False
    if hep.interface is not None:
        return hep.interface == link.name
    return bool(set(hep.expected_ips) & {str(ipaddress.ip_address(a)) for a in link.addresses})


def placement(
    desired: NodeDesired, ifindexes: Sequence[int], links: Mapping[int, Link]
) -> dict[int, str | None]:
    """ifindex (of a vg_hosteps entry) -> the host endpoint whose entry it holds: the last by name
    of those placed on it (the encoder writes them in name order), None when none of the desired
    state's is (the agent has not caught up)."""
    out: dict[int, str | None] = {}
    for ifindex in ifindexes:
        names = [n for n, hep in sorted(desired.host_endpoints.items()) if _on(hep, links.get(ifindex))]
        out[ifindex] = names[-1] if names else None
    return out


def interface_name(links: Mapping[int, Link], ifindex: int) -> str:
    link = links.get(ifindex)
    return link.name if link is not None else f"if{ifindex}"


def endpoint_name(node: str, interface: str) -> str:
    """How observe and explain name a host endpoint's hook: node/<node>:<interface>."""
    return f"node/{node}:{interface}"


# -- bpf hosteps --------------------------------------------------------------------------------


def set_policies(
    view: ClusterView, policy: Mapping[tuple[int, PolicyEntryKey], PolicyEntryValue], profile: int
) -> list[str]:
    """The Calico policies whose rules the entries of tier profile `profile` hold (vg_policy)."""
    if not profile:
        return []
    names = set()
    for (ep_id, _), v in policy.items():
        if ep_id != profile:
            continue
        for ref, on in ((v.calico_ref, v.calico != TIER_NONE), (v.log_ref, bool(v.log))):
            rule = view.rule(ref) if on else None
            if rule is not None:
                names.add(f"{rule.kind or 'NetworkPolicy'} {rule_policy(rule)}")
    return sorted(names)


def hostep_rows(
    view: ClusterView,
    node: str,
    hosteps: Mapping[int, HepFlags],
    failsafe: Sequence[tuple[int, int, int]],
    policy: Mapping[tuple[int, PolicyEntryKey], PolicyEntryValue],
    links: Mapping[int, Link],
) -> list[Row]:
    desired = view.desired(node)
    names = placement(desired, sorted(hosteps), links)
    rows = []
    for ifindex, hep in sorted(hosteps.items()):
        name = names[ifindex]
        want = desired.host_endpoints.get(name) if name else None
        rows.append(
            {
                "node": node,
                "ifindex": ifindex,
                "interface": interface_name(links, ifindex),
                "host_endpoint": name,
                "flags": flag_names(hep),
                "profile_host": hep.profile_host,
                "profile_fwd": hep.profile_fwd,
                "profile_pre": hep.profile_pre,
                "policies_prednat": set_policies(view, policy, hep.profile_pre),
                "policies_normal": set_policies(view, policy, hep.profile_host),
                "policies_forward": set_policies(view, policy, hep.profile_fwd),
                "selected_by": list(want.policies) if want else [],
                "matches_desired": want is not None and HepFlags.of(want) == hep,
                "failsafe_inbound": failsafe_text(failsafe, DIR_INGRESS),
                "failsafe_outbound": failsafe_text(failsafe, DIR_EGRESS),
            }
        )
    return rows


# -- observe ------------------------------------------------------------------------------------


def hep_policy_set(
    desired: NodeDesired,
    reason: str,
    direction: int,
    saddr: str,
    daddr: str,
    proto: int,
    port: int,
    rule_ref: int,
) -> str | None:
    """The policy set a host endpoint event's reason names; for ALLOW_HOSTEP / DROP_HOSTEP told
    from the addresses (arriving: the node's address and no frontend is the normal set; leaving:
    the node's address as source is taken for a socket of the node, which only the kernel knows)."""
    if reason not in HEP_REASON_SETS:
        return None
    fixed = HEP_REASON_SETS[reason]
    if fixed is not None:
        return fixed
    if direction == DIR_INGRESS:
        local = hostep_model.to_node(desired, ipaddress.ip_address(daddr), proto, port)
    else:
        local = saddr in set(desired.host_addresses)
    if local:
        return hostep_model.SET_NORMAL
    return hostep_model.SET_FORWARD if rule_ref else hostep_model.SET_UNPOLICED
