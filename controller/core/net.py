"""IP network and protocol types shared by every layer."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132

# The protocols a NetworkPolicy port or a Service port can name (Kubernetes spelling).
L4_PROTOCOLS: Mapping[str, int] = {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP, "SCTP": IPPROTO_SCTP}
L4_PROTOCOL_NAMES: tuple[str, ...] = tuple(L4_PROTOCOLS)
# Every protocol a user can name on the command line, upper case.
PROTOCOL_NUMBERS: Mapping[str, int] = {"ICMP": IPPROTO_ICMP, **L4_PROTOCOLS, "ICMPV6": IPPROTO_ICMPV6}
# Display names; 0 is a policy entry for any protocol.
PROTOCOL_NAMES: Mapping[int, str] = {
    0: "ANY",
    IPPROTO_ICMP: "ICMP",
    IPPROTO_TCP: "TCP",
    IPPROTO_UDP: "UDP",
    IPPROTO_ICMPV6: "ICMPv6",
    IPPROTO_SCTP: "SCTP",
}
