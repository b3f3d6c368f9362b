"""DNS names (controller.core.dnsnames) and the wire format (controller.core.dnswire)."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.core import dnsnames, dnswire
from controller.core.dnswire import Question, Record

LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
NAME = st.lists(LABEL, min_size=2, max_size=5).map(".".join)


@pytest.mark.parametrize("name", ["example.com", "API.Stripe.com.", "a-b.c_d.io", "x.y"])
def test_valid_names_have_no_problems(name: str) -> None:
    assert dnsnames.problems(name) == []


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("localhost", "at least two labels"),
        ("a..b", "empty label"),
        ("-a.com", "must consist of"),
        ("a b.com", "must consist of"),
        ("*.example.com", "must not contain a wildcard"),
        (("x" * 64) + ".com", "no more than 63"),
        (".".join(["abcdefgh"] * 30), "no more than 253"),
        ("", "non-empty"),
    ],
)
def test_invalid_names_say_what_is_wrong(name: str, problem: str) -> None:
    assert any(problem in p for p in dnsnames.problems(name)), dnsnames.problems(name)


def test_a_wildcard_is_allowed_only_as_the_whole_first_label_where_asked_for() -> None:
    assert dnsnames.problems("*.example.com", wildcard=True) == []
    assert dnsnames.problems("*.com", wildcard=True) == ["must have at least two labels (like example.com)"]
    assert "whole first label" in dnsnames.problems("www.*.example.com", wildcard=True)[0]
    assert "whole first label" in dnsnames.problems("*a.example.com", wildcard=True)[0]


def test_a_wildcard_matches_one_or_more_labels_in_front_and_not_the_name_itself() -> None:
    pattern = "*.kubernetes.io"
    assert dnsnames.matches(pattern, "www.kubernetes.io")
    assert dnsnames.matches(pattern, "latest.blog.kubernetes.io")
    assert not dnsnames.matches(pattern, "kubernetes.io")
    assert not dnsnames.matches(pattern, "evilkubernetes.io")
    assert dnsnames.matches("kubernetes.io", "kubernetes.io")
    assert not dnsnames.matches("kubernetes.io", "www.kubernetes.io")


def test_names_are_compared_in_canonical_form() -> None:
    assert dnsnames.canonical("API.Example.COM.") == "api.example.com"


@given(NAME, st.integers(0, 0xFFFF), st.sampled_from([dnswire.TYPE_A, dnswire.TYPE_AAAA]))
def test_a_query_decodes_to_what_was_encoded(name: str, qid: int, qtype: int) -> None:
    msg = dnswire.decode(dnswire.encode_query(qid, name, qtype))
    assert (msg.id, msg.is_response, msg.questions) == (qid, False, (Question(name, qtype),))


@given(
    NAME,
    NAME,
    st.lists(st.ip_addresses(), max_size=120),
    st.integers(0, 2**31 - 1),
)
def test_an_answer_with_a_cname_chain_decodes_to_its_records(
    name: str, target: str, addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address], ttl: int
) -> None:
    records = [Record(name, dnswire.TYPE_CNAME, ttl, target)] + [
        Record(target, dnswire.TYPE_A if a.version == 4 else dnswire.TYPE_AAAA, ttl, str(a))
        for a in addresses
    ]
    msg = dnswire.decode(dnswire.encode_response(7, Question(name, dnswire.TYPE_A), records))
    assert msg.is_response and msg.rcode == 0
    assert msg.answers == tuple(records)


def test_compressed_names_are_followed() -> None:
    question = dnswire.encode_name("api.example.com") + struct.pack("!HH", dnswire.TYPE_A, 1)
    # answer owner = pointer to the question's name (offset 12); CNAME target = "cdn" + pointer
    # to "example.com" (offset 16)
    target = b"\x03cdn\xc0\x10"
    answer = b"\xc0\x0c" + struct.pack("!HHIH", dnswire.TYPE_CNAME, 1, 60, len(target)) + target
    # owner = pointer to the CNAME target (offset 12 + 17 + 4 + 12 = 45)
    a_record = b"\xc0\x2d" + struct.pack("!HHIH", dnswire.TYPE_A, 1, 30, 4) + bytes([10, 0, 0, 5])
    data = dnswire.HEADER.pack(1, dnswire.FLAG_QR, 1, 2, 0, 0) + question + answer + a_record
    msg = dnswire.decode(data)
    assert msg.answers == (
        Record("api.example.com", dnswire.TYPE_CNAME, 60, "cdn.example.com"),
        Record("cdn.example.com", dnswire.TYPE_A, 30, "10.0.0.5"),
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00\x01", "shorter than the 12-octet header"),
        (dnswire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x03abc", "runs past the end"),
        (dnswire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", "does not point back"),
        (dnswire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x03abc\xc0", "truncated compression pointer"),
        (dnswire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x40abc\x00", "unknown label type"),
        (dnswire.HEADER.pack(1, 0, 1, 0, 0, 0) + b"\x03abc\x00\x00", "truncated type and class"),
        (
            dnswire.HEADER.pack(1, 0, 0, 1, 0, 0) + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 3) + b"abc",
            "3-octet",
        ),
        (dnswire.HEADER.pack(1, 0, 0, 1, 0, 0) + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 4), "runs past"),
        (
            dnswire.HEADER.pack(1, 0, 1, 0, 0, 0)
            + b"\x3f"
            + b"a" * 63
            + b"\x3f"
            + b"a" * 63
            + b"\x3f"
            + b"a" * 63
            + b"\x3f"
            + b"a" * 63
            + b"\x00\x00\x01\x00\x01",
            "longer than 255",
        ),
    ],
)
def test_malformed_messages_are_refused_with_what_is_wrong(data: bytes, problem: str) -> None:
    with pytest.raises(dnswire.DnsWireError, match=problem):
        dnswire.decode(data)


@given(st.binary(max_size=600))
def test_garbage_either_decodes_or_raises_a_wire_error(data: bytes) -> None:
    with contextlib.suppress(dnswire.DnsWireError):  # any other exception fails the test
        dnswire.decode(data)


def test_a_tcp_message_is_prefixed_with_its_length() -> None:
    query = dnswire.encode_query(1, "example.com")
    assert dnswire.tcp_frame(query) == struct.pack("!H", len(query)) + query
