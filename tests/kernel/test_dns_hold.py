"""DNS for domainNames rules in the kernel (bpf/lib/dns.h, lib/dnslearned.h): a pod's queries are
copied to vg_dns_held, its answers held there until released with VG_MARK_DNS_RELEASED, and an
address in vg_dns_learned gives its egress new flows the domain identity's tier entries."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from controller.agent.dns_service import DnsService
from controller.compiler.desired_state import PolicyEntryKey, PolicyEntryValue
from controller.compiler.stages.domains import DomainClasses
from controller.core import dnswire
from controller.core.verdicts import DIR_EGRESS, TIER_ACCEPT, TIER_DENY, TIER_PROFILE_BIT
from controller.datapath import abi, codecs, dns_codecs, encoding
from controller.datapath.ringbuf import RingBuffer
from tests.support import packets as P
from tests.support.kernel import EP, POD_A, POD_A6, TC_ACT_OK, TC_ACT_SHOT, Harness

pytestmark = [pytest.mark.root, pytest.mark.bcc]

DNS = "10.96.0.10"
API = "203.0.113.5"  # learned for the domain
OTHER = "203.0.113.9"  # not learned
FQDN_ID = 0x02000001  # a domain identity
PROFILE = TIER_PROFILE_BIT | 7


def now_ns() -> int:
    return time.monotonic_ns()  # vg_now()'s clock (CLOCK_MONOTONIC, at tick resolution)


def query(sport: int = 40000, qid: int = 7) -> bytes:
    return P.ipv4(
        POD_A, DNS, socket.IPPROTO_UDP, P.udp(sport, 53, dnswire.encode_query(qid, "api.example.com"))
    )


def answer(sport: int = 40000, qid: int = 7, src: str = DNS) -> bytes:
    q = dnswire.Question("api.example.com", dnswire.TYPE_A)
    body = dnswire.encode_response(qid, q, [dnswire.Record("api.example.com", dnswire.TYPE_A, 30, API)])
    return P.ipv4(src, POD_A, socket.IPPROTO_UDP, P.udp(53, sport, body))


def syn(dst: str, port: int = 443, sport: int = 50000) -> bytes:
    return P.ipv4(POD_A, dst, socket.IPPROTO_TCP, P.tcp(sport, port, P.SYN))


@pytest.fixture
def ring(h: Harness) -> Iterator[RingBuffer]:
    with RingBuffer(str(h.dp.pin_dir / "vg_dns_held")) as r:
        r.read()  # whatever earlier tests left
        yield r


def dns_endpoint(h: Harness, dns: bool = True) -> None:
    """POD_A, egress decided by tier profile PROFILE: the domain identity to 443 accepted (Admin,
    rank 1), everything else denied (Admin, rank 2); learning from DNS when `dns`."""
    flags = encoding.endpoint_flags(False, False) | abi.EP_F_EGRESS_TIERED | (abi.EP_F_DNS if dns else 0)
    h.dp.maps["vg_endpoints"].update(
        *codecs.encode_endpoint(EP, 256, flags, POD_A, POD_A6, slot=1, tier_profile=PROFILE)
    )
    accept = PolicyEntryValue(verdict=0, rule_ref=0, admin=TIER_ACCEPT, admin_rank=1, admin_ref=11)
    deny = PolicyEntryValue(verdict=0, rule_ref=0, admin=TIER_DENY, admin_rank=2, admin_ref=12)
    for key, value in (
        (PolicyEntryKey(DIR_EGRESS, FQDN_ID, socket.IPPROTO_TCP, 443, 16), accept),
        (PolicyEntryKey(DIR_EGRESS, 0, 0, 0, 0), deny),
    ):
        h.dp.maps["vg_policy"].update(*codecs.encode_policy(PROFILE, key, value))
    # DNS itself: an Admin Accept before the Deny (any peer, UDP 53)
    h.dp.maps["vg_policy"].update(
        *codecs.encode_policy(
            PROFILE,
            PolicyEntryKey(DIR_EGRESS, 0, socket.IPPROTO_UDP, 53, 16),
            PolicyEntryValue(verdict=0, rule_ref=0, admin=TIER_ACCEPT, admin_rank=0, admin_ref=10),
        )
    )
    h.ipcache("0.0.0.0/0", 2)


def releasing(h: Harness, until_ns: int) -> None:
    h.dp.maps["vg_dns_state"].update(codecs.u32_key(0), bytes(abi.DnsState(hold_until_ns=until_ns)))


def learn(h: Harness, address: str, expires_ns: int, identity: int = FQDN_ID) -> None:
    h.dp.maps["vg_dns_learned"].update(*dns_codecs.encode_learned(EP, address, identity, expires_ns))


def held(ring: RingBuffer) -> list[dns_codecs.Held]:
    return [dns_codecs.decode_held(r) for r in ring.read()]


def test_a_query_is_copied_and_sent_on_and_its_answer_held_until_released(
    h: Harness, ring: RingBuffer
) -> None:
    dns_endpoint(h)
    releasing(h, now_ns() + 10**10)
    q = query()
    assert h.from_pod(q) == TC_ACT_OK
    [copy] = held(ring)
    assert (copy.kind, copy.ep_id, copy.ifindex, copy.frame) == (abi.DNS_HELD_QUERY, EP, EP, q)
    a = answer()
    assert h.to_pod(a) == TC_ACT_SHOT
    [kept] = held(ring)
    assert (kept.kind, kept.frame) == (abi.DNS_HELD_ANSWER, a)
    assert h.count(abi.Reason.DNS_HELD, 0) == 1
    # released by the agent: judged as the reply it is, not held again
    assert h.to_pod(a, mark=abi.VG_MARK_DNS_RELEASED) == TC_ACT_OK
    assert held(ring) == []
    assert h.count(abi.Reason.ALLOW_REPLY, 0) == 1


def test_an_answer_nobody_asked_for_is_not_held_and_is_judged_as_a_new_flow(
    h: Harness, ring: RingBuffer
) -> None:
    dns_endpoint(h)
    releasing(h, now_ns() + 10**10)
    assert h.to_pod(answer(sport=41000)) == TC_ACT_OK  # ingress not isolated here; nothing tracked
    assert held(ring) == []
    assert h.count(abi.Reason.DNS_HELD, 0) == 0


def test_answers_pass_unheld_while_the_agent_does_not_release_them(h: Harness, ring: RingBuffer) -> None:
    dns_endpoint(h)
    releasing(h, 0)  # never pushed forward (an agent that is not running)
    assert h.from_pod(query()) == TC_ACT_OK
    held(ring)
    assert h.to_pod(answer()) == TC_ACT_OK
    assert held(ring) == []
    assert h.count(abi.Reason.DNS_UNHELD, 0) == 1


def test_a_pod_that_does_not_learn_from_dns_is_untouched(h: Harness, ring: RingBuffer) -> None:
    dns_endpoint(h, dns=False)
    releasing(h, now_ns() + 10**10)
    assert h.from_pod(query()) == TC_ACT_OK
    assert h.to_pod(answer()) == TC_ACT_OK
    assert held(ring) == []


def test_a_learned_address_takes_its_domains_rules_and_others_stay_denied(h: Harness) -> None:
    dns_endpoint(h)
    assert h.from_pod(syn(API)) == TC_ACT_SHOT  # not learned yet: the Deny
    learn(h, API, now_ns() + 10**10)
    assert h.from_pod(syn(API, sport=50001)) == TC_ACT_OK
    assert h.count(abi.Reason.ALLOW_ADMIN, DIR_EGRESS) == 1
    assert h.from_pod(syn(API, port=80, sport=50002)) == TC_ACT_SHOT  # the domain's rule is 443 only
    assert h.from_pod(syn(OTHER, sport=50003)) == TC_ACT_SHOT


def test_after_the_ttl_new_flows_are_denied_and_established_ones_survive_a_policy_change(h: Harness) -> None:
    dns_endpoint(h)
    learn(h, API, now_ns() + 10**10)
    est = syn(API, sport=50010)
    assert h.from_pod(est) == TC_ACT_OK
    learn(h, API, now_ns() - 10**9)  # the TTL ran out a second ago
    assert h.from_pod(syn(API, sport=50011)) == TC_ACT_SHOT
    h.bump()  # a policy change: the established flow is judged again, with the expired entry
    ack = P.ipv4(POD_A, API, socket.IPPROTO_TCP, P.tcp(50010, 443, P.ACK))
    assert h.from_pod(ack) == TC_ACT_OK
    h.dp.maps["vg_dns_learned"].delete(dns_codecs.encode_learned_key(EP, API))
    h.bump()  # the agent removed the entry: now nothing allows it
    assert h.from_pod(ack) == TC_ACT_SHOT


class Released:
    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []

    def release(self, ifindex: int, frame: bytes) -> None:
        self.frames.append((ifindex, frame))

    def close(self) -> None:
        pass


def test_the_agents_dns_thread_learns_before_it_releases_and_the_first_connection_passes(
    h: Harness, ring: RingBuffer
) -> None:
    dns_endpoint(h)
    matcher = DomainClasses({(False, "api.example.com"): FQDN_ID}, {})
    service = DnsService(h.dp.pin_dir, lambda: matcher)
    service.push_deadline(h.dp.maps["vg_dns_state"])
    assert h.from_pod(query()) == TC_ACT_OK
    a = answer()
    assert h.to_pod(a) == TC_ACT_SHOT
    out = Released()
    service.handle(ring.read(), h.dp.maps["vg_dns_learned"], out)
    assert out.frames == [(EP, a)]
    [(kb, vb)] = h.dp.maps["vg_dns_learned"].items().items()
    got = dns_codecs.decode_learned(kb, vb)
    assert (got.ep_id, got.address, got.identity) == (EP, API, FQDN_ID)
    assert 29 * 10**9 < got.expires_ns - now_ns() <= 30 * 10**9  # the record's TTL
    assert h.to_pod(a, mark=abi.VG_MARK_DNS_RELEASED) == TC_ACT_OK  # what the releaser sends
    assert h.from_pod(syn(API)) == TC_ACT_OK  # right after the answer: no race
    assert service.counts == {"released": 1, "learned": 1, "release_errors": 0, "queries": 1}


def test_a_spoofed_answer_is_released_but_teaches_nothing(h: Harness, ring: RingBuffer) -> None:
    dns_endpoint(h)
    service = DnsService(h.dp.pin_dir, lambda: DomainClasses({(False, "api.example.com"): FQDN_ID}, {}))
    service.push_deadline(h.dp.maps["vg_dns_state"])
    assert h.from_pod(query(qid=7)) == TC_ACT_OK
    assert h.to_pod(answer(qid=8)) == TC_ACT_SHOT  # same flow, another DNS id: not an answer to it
    out = Released()
    service.handle(ring.read(), h.dp.maps["vg_dns_learned"], out)
    assert len(out.frames) == 1 and h.dp.maps["vg_dns_learned"].items() == {}
    assert service.learner.ignored == {"unasked": 1}
    assert h.from_pod(syn(API)) == TC_ACT_SHOT
