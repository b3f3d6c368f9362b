"""Realization without ordering resourceVersions: content digests, what an agent reports, how
a reader compares it, and how the lab turns it into realized_generation without BOOKMARKs."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from controller.agent import realization
from controller.agent.cluster_events import KindSnapshot, Snapshot
from controller.core.object_versions import EMPTY_DIGEST, digest_text, kind_digest, object_digest
from controller.lab.agents import realized_generation
from controller.lab.store import Store


def obj(name: str, rv: str, namespace: str | None = "x", **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "resourceVersion": rv} | ({"namespace": namespace} if namespace else {})
    return {"metadata": meta, **extra}


@given(
    st.lists(
        st.tuples(st.sampled_from("abcdef"), st.sampled_from(["put", "delete"]), st.integers(1, 50)),
        max_size=40,
    )
)
def test_a_digest_kept_per_event_equals_the_digest_of_the_final_objects(
    ops: list[tuple[str, str, int]],
) -> None:
    cache: dict[str, dict[str, Any]] = {}
    digest = EMPTY_DIGEST
    for name, op, rv in ops:
        key = f"x/{name}"
        old = cache.pop(key, None)
        if old is not None:
            digest ^= object_digest(key, old["metadata"]["resourceVersion"])
        if op == "put":
            cache[key] = obj(name, str(rv))
            digest ^= object_digest(key, str(rv))
    assert digest == kind_digest(cache.values(), namespaced=True)


def test_digests_differ_when_a_version_an_object_or_its_name_differs() -> None:
    base = [obj("a", "1"), obj("b", "2")]
    d = kind_digest(base, True)
    assert d == kind_digest(list(reversed(base)), True)  # order does not matter
    assert d != kind_digest([obj("a", "1"), obj("b", "3")], True)
    assert d != kind_digest([obj("a", "1")], True)
    assert d != kind_digest([obj("a", "1"), obj("b", "2", namespace="y")], True)
    assert digest_text(EMPTY_DIGEST) == "0" * 16 and len(digest_text(d)) == 16


def snapshot(absent: tuple[str, ...] = (), **kinds: list[Any]) -> Snapshot:
    out = {kind: KindSnapshot((), "", 0, True, absent=True) for kind in absent}
    for kind, objects in kinds.items():
        namespaced = realization.NAMESPACED[kind]
        out[kind] = KindSnapshot(
            tuple(objects), "rv-" + kind, 0, True, digest=kind_digest(objects, namespaced)
        )
    return Snapshot(out)


def test_an_agent_reports_every_kind_as_a_whole_and_policies_one_by_one() -> None:
    snap = snapshot(
        ("GlobalNetworkPolicy.projectcalico.org",),
        Pod=[obj("a", "5")],
        NetworkPolicy=[obj("deny", "7")],
        ClusterNetworkPolicy=[obj("admin", "8", namespace=None)],
    )
    kinds = realization.realized_kinds(snap)
    assert set(kinds) == {"Pod", "NetworkPolicy", "ClusterNetworkPolicy"}  # an absent kind is left out
    assert kinds["Pod"] == {
        "resourceVersion": "rv-Pod",  # as the server sent it: never parsed
        "objects": 1,
        "digest": digest_text(kind_digest([obj("a", "5")], True)),
    }
    assert realization.realized_objects(snap) == {
        "ClusterNetworkPolicy": {"admin": "8"},
        "NetworkPolicy": {"x/deny": "7"},
    }
    assert realization.realized_kinds(None) == {} and realization.realized_objects(None) == {}


def test_a_policy_is_realized_where_the_agent_holds_its_very_version() -> None:
    status = {"realized_objects": realization.realized_objects(snapshot(NetworkPolicy=[obj("deny", "7")]))}
    policy = {"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1", **obj("deny", "7")}
    assert realization.realized_version(status, policy) == "7"
    assert realization.realized_version(status, {**policy, **obj("other", "7")}) is None
    calico = {"kind": "NetworkPolicy", "apiVersion": "projectcalico.org/v3", **obj("deny", "7")}
    assert realization.kind_of(calico) == "NetworkPolicy.projectcalico.org"
    assert realization.realized_version(status, calico) is None  # another kind of the same name
    assert realization.realized_version(None, policy) is None


def test_a_reader_compares_the_digests_of_the_kinds_it_listed() -> None:
    snap = snapshot(Pod=[obj("a", "5")], NetworkPolicy=[obj("deny", "7")])
    status = {"realized": realization.realized_kinds(snap)}
    pods, policies = (digest_text(kind_digest(snap.kinds[k].objects, True)) for k in ("Pod", "NetworkPolicy"))
    assert realization.differing_kinds({"Pod": pods, "NetworkPolicy": policies}, status) == []
    newer = digest_text(kind_digest([obj("deny", "9")], True))
    assert realization.differing_kinds({"Pod": pods, "NetworkPolicy": newer}, status) == ["NetworkPolicy"]
    # a kind the agent does not report (not served to it) counts as empty
    assert realization.differing_kinds({"Service": digest_text(EMPTY_DIGEST)}, status) == []
    assert realization.differing_kinds({"Service": newer}, status) == ["Service"]


def test_the_lab_counts_a_kind_nobody_wrote_since_as_current_without_bookmarks() -> None:
    store = Store()
    store.create("namespaces", {"metadata": {"name": "x"}})  # 1
    store.create("pods", obj("a", "", spec={"containers": [{"name": "c", "image": "i"}]}))  # 2
    store.create("networkpolicies", obj("deny", "", spec={"podSelector": {}}))  # 3

    def status(**versions: str) -> dict[str, Any]:
        return {"realized": {kind: {"resourceVersion": rv} for kind, rv in versions.items()}}

    # saw each kind's last write: everything up to now, though no kind saw version 3 but one
    assert realized_generation(store, status(Namespace="1", Pod="2", NetworkPolicy="3")) == 3
    store.create("endpointslices", obj("s", "", addressType="IPv4"))  # 4: a kind the agent does not watch
    assert realized_generation(store, status(Namespace="1", Pod="2", NetworkPolicy="3")) == 4
    store.create("pods", obj("b", "", spec={"containers": [{"name": "c", "image": "i"}]}))  # 5
    assert realized_generation(store, status(Namespace="1", Pod="2", NetworkPolicy="3")) == 2  # missed 5
    assert realized_generation(store, status(Namespace="1", Pod="5", NetworkPolicy="3")) == 5
    assert realized_generation(store, status(Namespace="4", Pod="5", NetworkPolicy="4")) == 5  # a list's
    assert realized_generation(store, status(Pod="opaque")) is None  # not this store's version
    assert realized_generation(store, {}) is None
