"""What pods learned from DNS, in the debug views (issue 20, item 3): the names table the agent
writes, `bpf dns`, explain (compiled model and live maps, with the learned address and its
expiry) and the flow records observe prints (pure: fake maps, no kernel)."""

from __future__ import annotations

from typing import Any

from controller.agent import flow_record
from controller.compiler.clusterview import ClusterView
from controller.core.verdicts import DIR_EGRESS
from controller.datapath import abi, codecs, dns_codecs
from controller.datapath.dns_codecs import LearnedEntry
from controller.datapath.dns_table import LearnedTable, NameIds
from controller.debug import bpfview, observe
from controller.debug.explain import explain
from controller.debug.kernel import NodeMaps
from tests.support.debug_views import FakeMap, fake_maps, flow_event, kernel_state, raw_cluster

NOW = 1_000 * 10**9
API, EVIL, BUCKET = "203.0.113.5", "203.0.113.9", "198.18.7.1"
POD, NODE = "x/a", "node-1"  # 10.244.1.10 on node-1 in the 9-pod model

ALLOW_LIST: dict[str, Any] = {
    "apiVersion": "policy.networking.k8s.io/v1alpha2",
    "kind": "ClusterNetworkPolicy",
    "metadata": {"name": "x-egress"},
    "spec": {
        "tier": "Admin",
        "priority": 10,
        "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}},
        "egress": [
            {"name": "names", "action": "Accept", "to": [{"domainNames": ["api.example", "*.s3.example"]}]}
        ],
    },
}
DENY_ALL: dict[str, Any] = {
    "apiVersion": "policy.networking.k8s.io/v1alpha2",
    "kind": "ClusterNetworkPolicy",
    "metadata": {"name": "x-deny-all"},
    "spec": {
        "tier": "Admin",
        "priority": 20,
        "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}},
        "egress": [{"name": "the-rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}],
    },
}


def view() -> ClusterView:
    return ClusterView(raw_cluster([], cluster_policies=[ALLOW_LIST, DENY_ALL]))


def domain_id(v: ClusterView, name: str) -> int:
    ident = v.desired(NODE).domains.identity(name)
    assert ident is not None
    return ident


def learned_maps(v: ClusterView, entries: list[tuple[str, str, int]]) -> tuple[FakeMap, FakeMap]:
    """vg_dns_learned / vg_dns_names holding (address, name, expires_ns) learned by POD."""
    ifindex = fake_maps(v, NODE)[1][POD]
    learned, names = FakeMap({}), FakeMap({})
    ids = NameIds(names)
    for address, name, expires in entries:
        learned.update(
            *dns_codecs.encode_learned(ifindex, address, domain_id(v, name), expires, ids.id_of(name))
        )
    return learned, names


def test_name_keys_are_handed_out_in_order_once_per_name_and_continue_after_the_pinned_ones() -> None:
    names = FakeMap({})
    ids = NameIds(names)
    assert [ids.id_of(n) for n in ("a.example", "b.example", "a.example")] == [1, 2, 1]
    assert {dns_codecs.decode_name(v) for v in names.items().values()} == {"a.example", "b.example"}
    restarted = NameIds(names)  # a new agent reads what is pinned
    assert restarted.id_of("b.example") == 2 and restarted.id_of("c.example") == 3


def test_the_learned_table_names_each_entry_and_says_unknown_when_the_name_is_gone() -> None:
    learned, names = FakeMap({}), FakeMap({})
    learned.update(*dns_codecs.encode_learned(7, API, 1 << 26, NOW, NameIds(names).id_of("api.example")))
    learned.update(*dns_codecs.encode_learned(7, "2001:db8::5", 1 << 26, NOW, 99))  # 99: evicted
    table = LearnedTable(learned, names)
    assert table.lookup(7, API) == LearnedEntry(7, API, 1 << 26, NOW, 1, "api.example")
    assert table.lookup(8, API) is None
    assert [(e.address, e.name) for e in table.entries()] == [("2001:db8::5", None), (API, "api.example")]


def test_a_domain_identity_reads_as_its_pattern() -> None:
    v = view()
    assert v.identity_text(domain_id(v, "eu.bucket.s3.example")) == "domain:*.s3.example"
    assert v.identity_text(domain_id(v, "api.example")) == "domain:api.example"


def test_explain_allows_a_learned_address_and_names_the_domain_and_the_time_left() -> None:
    v = view()
    learned, names = learned_maps(v, [(API, "api.example", NOW + 25 * 10**9)])
    table = LearnedTable(learned, names)
    e = explain(v, POD, API, 443, learned=lambda node, ip, peer: table.lookup(10, peer), now_ns=NOW)
    assert e.allowed and e.egress.reason == "ALLOW_ADMIN" and e.egress.rule is not None
    assert "learned from DNS as api.example (domain:api.example), for 25 s more" in e.egress.text
    assert e.as_json()["egress"]["domain"] == {
        "name": "api.example",
        "address": API,
        "domain": "domain:api.example",
        "domain_identity": domain_id(v, "api.example"),
        "expires_in_s": 25.0,
        "expired": False,
    }


def test_explain_denies_an_expired_or_unlearned_address_and_says_why() -> None:
    v = view()
    learned, names = learned_maps(v, [(API, "api.example", NOW - 3 * 10**9)])
    table = LearnedTable(learned, names)
    lookup = lambda node, ip, peer: table.lookup(10, peer)  # noqa: E731
    expired = explain(v, POD, API, 443, learned=lookup, now_ns=NOW)
    assert not expired.allowed and expired.egress.reason == "DROP_ADMIN"
    assert "expired 3 s ago: new connections no longer match its domainNames rules" in expired.egress.text
    unlearned = explain(v, POD, EVIL, 443, learned=lookup, now_ns=NOW)
    assert not unlearned.allowed and unlearned.egress.domain is None
    assert f"x/a has not learned {EVIL} from a DNS answer" in unlearned.egress.text


def test_the_live_maps_use_the_learned_entry_as_the_program_does_and_agree_with_the_model() -> None:
    v = view()
    maps, ifindex = fake_maps(v, NODE)
    maps["vg_dns_learned"], maps["vg_dns_names"] = learned_maps(
        v, [(API, "api.example", NOW + 10**9), (BUCKET, "eu.bucket.s3.example", NOW - 10**9)]
    )
    nm = NodeMaps(NODE, maps)  # type: ignore[arg-type]
    ep = nm.endpoint_by_ip("10.244.1.10")
    assert ep is not None and ep.flags & abi.EP_F_DNS
    allowed = nm.verdict(ep, DIR_EGRESS, API, 6, 443, now_ns=NOW)
    assert (allowed.allowed, allowed.reason, allowed.peer_domain_identity) == (
        True,
        "ALLOW_ADMIN",
        domain_id(v, "api.example"),
    )
    assert nm.verdict(ep, DIR_EGRESS, BUCKET, 6, 443, now_ns=NOW).reason == "DROP_ADMIN"  # expired
    table = nm.learned()
    e = explain(
        v,
        POD,
        API,
        443,
        live=lambda node, ip, d, peer, proto, port: nm.verdict(ep, d, peer, proto, port, now_ns=NOW),
        learned=lambda node, ip, peer: table.lookup(ifindex[POD], peer),
        now_ns=NOW,
    )
    assert e.allowed and not e.mismatches and e.egress.kernel is not None


def test_bpf_dns_rows_name_the_pod_the_name_the_domain_and_the_expiry() -> None:
    v = view()
    state, _ = kernel_state(v, NODE)
    learned, names = learned_maps(
        v, [(API, "api.example", NOW + 25 * 10**9), (BUCKET, "eu.bucket.s3.example", NOW - 10**9)]
    )
    rows = bpfview.dns_rows(v, NODE, state, LearnedTable(learned, names).entries(), NOW)
    assert [(r["pod"], r["address"], r["name"], r["domain"], r["expired"]) for r in rows] == [
        (POD, BUCKET, "eu.bucket.s3.example", "domain:*.s3.example", True),
        (POD, API, "api.example", "domain:api.example", False),
    ]
    assert [bpfview.expiry_text(r["expires_in_s"]) for r in rows] == ["expired 1s ago", "25s"]
    assert "dns" in bpfview.flag_names(state.endpoints[10].flags)


def test_a_flow_to_a_learned_address_carries_the_domain_into_observe() -> None:
    v = view()
    ev = codecs.decode_event(
        flow_event("10.244.1.10", API, DIR_EGRESS, abi.Reason.ALLOW_ADMIN, ep_id=10), NODE
    )
    entry = LearnedEntry(10, API, domain_id(v, "api.example"), ev.ts_ns + 20 * 10**9, 1, "api.example")
    rec = flow_record.record(v, ev, 0, entry)
    assert rec["domain"] == {
        "name": "api.example",
        "domain": "domain:api.example",
        "expires": "1970-01-01T00:00:25.000Z",
        "expired": False,
    }
    assert "[dns api.example domain:api.example until 00:00:25]" in observe.line(rec)
    assert flow_record.record(v, ev, 0)["domain"] is None


def test_explain_says_so_when_the_source_node_s_learned_table_is_not_visible() -> None:
    def elsewhere(node: str, ip: str, peer: str) -> LearnedEntry | None:
        raise LookupError(f"the maps of {node} are not visible from here")

    e = explain(view(), POD, API, 443, learned=elsewhere, now_ns=NOW)
    assert not e.allowed and e.egress.domain is None
    assert (
        "the maps of node-1 are not visible from here: what x/a learned from DNS is not known"
        in e.egress.text
    )
