"""controller.agent.dns_learn: which held answers teach a pod which addresses (pure)."""

from __future__ import annotations

import socket

import pytest

from controller.agent import dns_learn
from controller.agent.dns_learn import Learned, Learner
from controller.compiler.stages.domains import DomainClasses
from controller.core import dnswire
from controller.core.dnswire import Question, Record
from tests.support import packets as P

POD, POD6, DNS, DNS6 = "10.244.1.10", "fd00:10:244:1::10", "10.245.0.10", "fd00:10:245::10"
MATCHER = DomainClasses.build(
    ["api.stripe.com", "*.kubernetes.io", "latest.blog.kubernetes.io", "*.s3.amazonaws.com"]
)
STRIPE, K8S, LATEST, S3 = (
    MATCHER.ids[(False, "api.stripe.com")],
    MATCHER.ids[(True, "kubernetes.io")],
    MATCHER.ids[(False, "latest.blog.kubernetes.io")],
    MATCHER.ids[(True, "s3.amazonaws.com")],
)


def q(name: str, qid: int = 1, sport: int = 40000, qtype: int = dnswire.TYPE_A, v6: bool = False) -> bytes:
    body = dnswire.encode_query(qid, name, qtype)
    if v6:
        return P.ipv6(POD6, DNS6, socket.IPPROTO_UDP, P.udp(sport, 53, body))
    return P.ipv4(POD, DNS, socket.IPPROTO_UDP, P.udp(sport, 53, body))


def a(name: str, records: list[Record], qid: int = 1, sport: int = 40000, src: str = DNS, **kw: int) -> bytes:
    body = dnswire.encode_response(qid, Question(name, kw.get("qtype", dnswire.TYPE_A)), records)
    if ":" in src:
        return P.ipv6(src, POD6, socket.IPPROTO_UDP, P.udp(53, sport, body))
    return P.ipv4(src, POD, socket.IPPROTO_UDP, P.udp(53, sport, body))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def learner(clock: Clock) -> Learner:
    return Learner(lambda: MATCHER, clock)


def rec(name: str, address: str, ttl: int = 30) -> Record:
    return Record(name, dnswire.TYPE_AAAA if ":" in address else dnswire.TYPE_A, ttl, address)


@pytest.mark.parametrize(
    ("name", "identity"),
    [
        ("api.stripe.com", STRIPE),
        ("API.Stripe.com.", STRIPE),
        ("www.stripe.com", None),
        ("www.kubernetes.io", K8S),
        ("a.b.kubernetes.io", K8S),
        ("kubernetes.io", None),
        ("latest.blog.kubernetes.io", LATEST),
        ("bucket.s3.amazonaws.com", S3),
        ("s3.amazonaws.com", None),
    ],
)
def test_a_name_gets_its_class_identity_exact_first_then_the_longest_wildcard(
    name: str, identity: int | None
) -> None:
    assert MATCHER.identity(name) == identity


def test_a_pattern_selects_every_class_whose_names_it_matches() -> None:
    assert MATCHER.identities("*.kubernetes.io") == {K8S, LATEST}  # latest.blog... matches it too
    assert MATCHER.identities("latest.blog.kubernetes.io") == {LATEST}
    assert MATCHER.identities("api.stripe.com") == {STRIPE}
    assert MATCHER.identities("*.stripe.com") == frozenset()  # no policy names it
    nested = DomainClasses.build(["*.example.com", "*.eu.example.com", "example.com"])
    eu, top, bare = (
        nested.ids[k] for k in ((True, "eu.example.com"), (True, "example.com"), (False, "example.com"))
    )
    assert nested.identities("*.example.com") == {top, eu}
    assert nested.identities("*.eu.example.com") == {eu}
    assert nested.identities("example.com") == {bare}  # *.example.com does not match example.com
    assert (nested.identity("a.eu.example.com"), nested.identity("a.example.com")) == (eu, top)


def test_a_class_keeps_its_identity_and_a_new_pattern_does_not_take_a_removed_ones() -> None:
    again = DomainClasses.build(["*.s3.amazonaws.com", "new.example.org", "api.stripe.com"], MATCHER)
    assert again.ids[(False, "api.stripe.com")] == STRIPE and again.ids[(True, "s3.amazonaws.com")] == S3
    assert again.ids[(False, "new.example.org")] not in {STRIPE, K8S, LATEST, S3}
    assert (False, "latest.blog.kubernetes.io") not in again.ids
    # the same in another agent, or after a restart (no previous compilation)
    assert DomainClasses.build(["api.stripe.com"]).ids == {(False, "api.stripe.com"): STRIPE}


def test_an_answer_to_a_query_the_pod_sent_teaches_every_address_of_the_chain(learner: Learner) -> None:
    learner.query(7, q("api.stripe.com"))
    got = learner.answer(
        7,
        a(
            "api.stripe.com",
            [
                Record("api.stripe.com", dnswire.TYPE_CNAME, 300, "edge.stripe-cdn.net"),
                rec("edge.stripe-cdn.net", "203.0.113.5", 20),
                rec("edge.stripe-cdn.net", "203.0.113.6", 1),
            ],
        ),
    )
    assert got == [
        Learned(7, "203.0.113.5", STRIPE, 20, "api.stripe.com"),
        Learned(7, "203.0.113.6", STRIPE, dns_learn.MIN_HOLD, "api.stripe.com"),
    ]


def test_ipv6_answers_are_learned_too(learner: Learner) -> None:
    learner.query(7, q("www.kubernetes.io", qtype=dnswire.TYPE_AAAA, v6=True))
    got = learner.answer(
        7, a("www.kubernetes.io", [rec("www.kubernetes.io", "2001:db8::5")], src=DNS6, qtype=28)
    )
    assert [(g.address, g.identity) for g in got] == [("2001:db8::5", K8S)]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"qid": 2}, "unasked"),
        ({"sport": 40001}, "unasked"),
        ({"src": "10.245.0.11"}, "unasked"),
        ({"name": "evil.example.com"}, "other question"),
    ],
)
def test_an_answer_that_does_not_match_the_query_teaches_nothing(
    learner: Learner, change: dict, why: str
) -> None:
    learner.query(7, q("api.stripe.com"))
    name = change.pop("name", "api.stripe.com")
    assert learner.answer(7, a(name, [rec(name, "198.51.100.66")], **change)) == []
    assert learner.ignored == {why: 1}


def test_a_query_is_answered_once_and_forgotten_after_its_wait(learner: Learner, clock: Clock) -> None:
    learner.query(7, q("api.stripe.com"))
    answer = a("api.stripe.com", [rec("api.stripe.com", "203.0.113.5")])
    assert len(learner.answer(7, answer)) == 1
    assert learner.answer(7, answer) == []  # a second (spoofed?) answer to the same query
    learner.query(7, q("api.stripe.com", qid=9))
    clock.t += dns_learn.QUERY_WAIT + 1
    assert learner.answer(7, a("api.stripe.com", [rec("api.stripe.com", "203.0.113.5")], qid=9)) == []
    assert learner.pending == {}


def test_another_pods_query_does_not_count(learner: Learner) -> None:
    learner.query(8, q("api.stripe.com"))
    assert learner.answer(7, a("api.stripe.com", [rec("api.stripe.com", "203.0.113.5")])) == []


def test_a_name_no_pattern_matches_teaches_nothing(learner: Learner) -> None:
    learner.query(7, q("example.org"))
    assert learner.answer(7, a("example.org", [rec("example.org", "203.0.113.5")])) == []
    assert learner.ignored == {"no domain": 1}


def test_the_pending_queries_are_bounded(learner: Learner) -> None:
    for i in range(dns_learn.MAX_PENDING + 10):
        learner.query(7, q("api.stripe.com", qid=i % 65536, sport=1024 + i))
    assert len(learner.pending) == dns_learn.MAX_PENDING


def test_a_tcp_answer_in_one_segment_is_read_after_its_length() -> None:
    body = dnswire.encode_response(3, Question("api.stripe.com", 1), [rec("api.stripe.com", "203.0.113.5")])
    frame = P.ipv4(DNS, POD, socket.IPPROTO_TCP, P.tcp(53, 40000, P.ACK, dnswire.tcp_frame(body)))
    f = dns_learn.parse_frame(frame)
    assert (f.proto, f.src, f.sport, f.dport, f.payload) == (6, DNS, 53, 40000, body)
    with pytest.raises(dns_learn.FrameError, match="more than one TCP segment"):
        dns_learn.parse_frame(
            P.ipv4(DNS, POD, socket.IPPROTO_TCP, P.tcp(53, 40000, P.ACK, dnswire.tcp_frame(body)[:-3]))
        )


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"\x00" * 10, "shorter than an Ethernet header"),
        (P.arp(), "is not IP"),
        (P.ipv4(POD, DNS, 1, b"\x08\x00\x00\x00"), "neither UDP nor TCP"),
        (P.ipv4(POD, DNS, 17, b"\x00\x35"), "truncated UDP header"),
    ],
)
def test_frames_that_are_not_dns_over_ip_are_refused(frame: bytes, problem: str) -> None:
    with pytest.raises(dns_learn.FrameError, match=problem):
        dns_learn.parse_frame(frame)
