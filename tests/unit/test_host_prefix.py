"""stages.cidr.host_prefix: the ipcache's per-address prefixes are the standard library's
networks in every way the compiler and the encoder use them (equality, hash, order, text,
containment), only built leaner."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from controller.compiler.stages.cidr import host_prefix

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@given(addresses)
def test_a_host_prefix_is_the_standard_network_of_that_address(addr: ipaddress.IPv4Address) -> None:
    lean, std = host_prefix(addr), ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")
    assert lean == std and hash(lean) == hash(std) and {std: 1}[lean] == 1
    assert (str(lean), repr(lean), lean.prefixlen, lean.version) == (
        str(std),
        repr(std),
        std.prefixlen,
        std.version,
    )
    assert (lean.network_address, lean.netmask, lean.broadcast_address) == (
        std.network_address,
        std.netmask,
        std.broadcast_address,
    )
    assert addr in lean and lean.overlaps(std)


@given(st.lists(st.ip_addresses(v=4), min_size=2, max_size=20))
def test_host_prefixes_sort_as_the_standard_networks_do(addrs: list[ipaddress.IPv4Address]) -> None:
    assert [str(n) for n in sorted(host_prefix(a) for a in addrs)] == [
        str(n) for n in sorted(ipaddress.ip_network(a) for a in addrs)
    ]
