"""The syntax of Kubernetes API strings (controller.compiler.apisyntax) against the rules as the API
documentation states them in words, and kube-apiserver's messages word for word."""

from __future__ import annotations

import ipaddress
import string

from hypothesis import given
from hypothesis import strategies as st

from controller.compiler import apisyntax as syntax
from controller.core.net import IPNetwork

ALNUM = string.ascii_letters + string.digits
LOWER_ALNUM = string.ascii_lowercase + string.digits

# --- independent statements of the rules -----------------------------------------------------


def is_label_name(text: str) -> bool:
    """1-63 characters of letters, digits, '-', '_', '.', starting and ending alphanumeric."""
    return (
        0 < len(text) <= 63
        and all(c in ALNUM + "-_." for c in text)
        and text[0] in ALNUM
        and text[-1] in ALNUM
    )


def is_dns_label(text: str, first: str = LOWER_ALNUM) -> bool:
    return (
        0 < len(text) <= 63
        and all(c in LOWER_ALNUM + "-" for c in text)
        and text[0] in first
        and text[-1] in LOWER_ALNUM
    )


def is_dns_subdomain(text: str) -> bool:
    return len(text) <= 253 and all(is_dns_label(part) for part in text.split("."))


def is_port_name(text: str) -> bool:
    return (
        0 < len(text) <= 15
        and all(c in LOWER_ALNUM + "-" for c in text)
        and any(c in string.ascii_lowercase for c in text)
        and "--" not in text
        and not text.startswith("-")
        and not text.endswith("-")
    )


# --- strategies ----------------------------------------------------------------------------

label_names = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True)
dns_labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
subdomains = st.lists(dns_labels, min_size=1, max_size=5).map(".".join)
# text that is mostly made of the characters these rules are about, with some others mixed in
near_miss = st.text(alphabet=st.sampled_from(ALNUM + "-_./ !A\n\u00e9"), max_size=70)


def test_the_issue_s_label_key_gets_kube_apiserver_s_words() -> None:
    assert syntax.label_key_problems("bad key!") == [
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
        "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
        "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
    ]


@given(st.one_of(st.none(), subdomains), label_names)
def test_a_label_name_with_an_optional_dns_subdomain_prefix_is_a_valid_label_key(
    prefix: str | None, name: str
) -> None:
    key = name if prefix is None else f"{prefix}/{name}"
    assert syntax.label_key_problems(key) == []


@given(near_miss)
def test_a_label_key_is_valid_exactly_when_its_prefix_is_a_subdomain_and_its_name_a_label_name(
    key: str,
) -> None:
    prefix, slash, name = key.rpartition("/")
    expected = is_label_name(name) and (not slash or (is_dns_subdomain(prefix) and "/" not in prefix))
    assert (syntax.label_key_problems(key) == []) == expected


def test_label_key_problems_name_the_part_that_is_wrong() -> None:
    assert syntax.label_key_problems("/app") == ["prefix part must be non-empty"]
    assert syntax.label_key_problems("Example.com/app")[0].startswith("prefix part a lowercase RFC 1123")
    assert syntax.label_key_problems("a" * 64) == ["name part must be no more than 63 bytes"]
    assert syntax.label_key_problems("a/b/c")[0].startswith("a valid label key must consist of")
    assert syntax.label_key_problems("app\n") != []  # Go's `$` is the end of the text


@given(near_miss)
def test_a_label_value_is_valid_exactly_when_it_is_empty_or_a_label_name(value: str) -> None:
    assert (syntax.label_value_problems(value) == []) == (value == "" or is_label_name(value))


def test_a_label_value_over_63_bytes_says_so() -> None:
    assert syntax.label_value_problems("v" * 64) == ["must be no more than 63 bytes"]


@given(st.text(alphabet=st.sampled_from(LOWER_ALNUM + "-.A_"), max_size=70))
def test_dns_names_follow_rfc_1123_and_1035(text: str) -> None:
    assert (syntax.dns1123_label_problems(text) == []) == is_dns_label(text)
    assert (syntax.dns1123_subdomain_problems(text) == []) == is_dns_subdomain(text)
    assert (syntax.dns1035_label_problems(text) == []) == is_dns_label(text, string.ascii_lowercase)


def test_a_subdomain_where_a_label_belongs_is_told_it_has_dots() -> None:
    assert syntax.dns1123_label_problems("a.b") == ["must not contain dots"]


@given(st.text(alphabet=st.sampled_from(LOWER_ALNUM + "-A_ "), max_size=18))
def test_a_port_name_is_an_iana_service_name(name: str) -> None:
    assert (syntax.port_name_problems(name) == []) == is_port_name(name)


def test_port_name_problems_are_listed_one_by_one() -> None:
    assert syntax.port_name_problems("80") == ["must contain at least one letter (a-z)"]
    assert syntax.port_name_problems("-a--b") == [
        "must not contain consecutive hyphens",
        "must not begin or end with a hyphen",
    ]
    assert syntax.port_name_problems("averyveryverylongname") == ["must be no more than 15 bytes"]


@given(st.integers(-(2**31), 2**31 - 1))
def test_a_port_number_is_between_1_and_65535(port: int) -> None:
    assert (syntax.port_number_problems(port) == []) == (1 <= port <= 65535)


# --- CIDRs ---------------------------------------------------------------------------------

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@given(addresses, st.data())
def test_any_address_with_a_prefix_length_reads_as_the_network_around_it(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
) -> None:
    prefix = data.draw(st.integers(0, address.max_prefixlen))
    expected = ipaddress.ip_network((address, prefix), strict=False)
    assert syntax.parse_cidr(f"{address}/{prefix}") == expected
    assert syntax.parse_cidr(f"{address}/0{prefix}") == expected  # leading zeros: decimal


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_ipv4_octets_with_leading_zeros_are_read_as_decimal(
    address: ipaddress.IPv4Address, prefix: int
) -> None:
    padded = ".".join(f"{int(octet):03d}" for octet in str(address).split("."))
    assert syntax.parse_cidr(f"{padded}/{prefix}") == ipaddress.ip_network((address, prefix), strict=False)


def test_what_is_not_a_cidr() -> None:
    for text in (
        "10.0.0.0",
        "10.0.0.0/",
        "10.0.0.0/33",
        "10.0.0.0/255.0.0.0",
        "10.0.0.256/8",
        "10.0.0/8",
        "fe80::1%eth0/64",
        "::/129",
        " 10.0.0.0/8",
        "10.0.0.0/8 ",
        "10.0.0.0/-1",
        "10.0.0.0/+8",
        "",
    ):
        assert syntax.parse_cidr(text) is None, text


def _not_ipv4_mapped(net: IPNetwork) -> bool:
    return net.version == 4 or net.network_address.ipv4_mapped is None


# IPv4-mapped IPv6 prefixes count as IPv4 (as Go's net package reads them): tested on their own below.
networks = st.one_of(st.from_type(ipaddress.IPv4Network), st.from_type(ipaddress.IPv6Network)).filter(
    _not_ipv4_mapped
)


@given(networks, networks)
def test_an_except_is_strictly_inside_a_cidr_when_it_is_a_longer_subnet_of_the_same_family(
    inner: IPNetwork, outer: IPNetwork
) -> None:
    same_family = inner.version == outer.version
    expected = same_family and inner.subnet_of(outer) and inner.prefixlen > outer.prefixlen  # type: ignore[arg-type]
    assert syntax.strictly_inside(inner, outer) == expected


def test_an_ipv4_mapped_except_is_read_as_the_ipv4_address_it_maps_as_kube_apiserver_does() -> None:
    v4_all = ipaddress.IPv4Network("0.0.0.0/0")
    assert syntax.strictly_inside(ipaddress.IPv6Network("::ffff:0:0/96"), v4_all)
    v6_doc = ipaddress.IPv6Network("2001:db8::/32")
    assert not syntax.strictly_inside(ipaddress.IPv6Network("::ffff:0:0/96"), v6_doc)


@given(st.from_type(ipaddress.IPv4Network))
def test_a_cidr_is_not_strictly_inside_itself_nor_any_wider_one_inside_it(net: ipaddress.IPv4Network) -> None:
    assert not syntax.strictly_inside(net, net)
    if net.prefixlen < 32:
        assert syntax.strictly_inside(next(net.subnets()), net)
        assert not syntax.strictly_inside(net, next(net.subnets()))


def test_an_ipv4_mapped_ipv6_except_counts_as_ipv4_as_go_reads_it() -> None:
    mapped = syntax.parse_cidr("::ffff:10.1.0.0/112")
    outer = syntax.parse_cidr("10.0.0.0/8")
    assert mapped is not None and outer is not None
    assert syntax.strictly_inside(mapped, outer)
