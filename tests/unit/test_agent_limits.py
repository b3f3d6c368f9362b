"""The agent under bad input and limits: garbage objects, full maps, new veths before their pod,
per-policy status, readiness and fatal datapath errors. Real model and compiler, fake kernel."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.agent.capacity import fit_capacity
from controller.agent.kube_api import KINDS
from controller.agent.loop import Agent, AgentConfig
from controller.agent.veth_match import unclaimed_key
from controller.core.errors import VethguardError
from tests.support.agent_fakes import (
    FakeDatapath,
    FakeLinkWatch,
    Routes,
    StaticApi,
    allow_ports,
    make_agent,
    metric,
    pod,
    relist,
)

# ------------------------------------------------------------------------------------------ fuzz

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=8), st.floats()
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["metadata", "spec", "status", "podSelector", "ingress", "egress", "ports", "from", "to", "ipBlock"]


def garbage_object(kind: str) -> st.SearchStrategy[Any]:
    named = st.fixed_dictionaries(
        {
            "metadata": st.fixed_dictionaries(
                {"name": st.sampled_from(["a", "b", "c"]), "namespace": st.sampled_from(["x", "y"])},
                optional={"labels": json_value, "generation": json_value},
            )
        },
        optional={
            "spec": st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=4),
            "status": json_value,
        },
    )
    return st.one_of(json_value, named)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries({spec.kind: st.lists(garbage_object(spec.kind), max_size=4) for spec in KINDS}),
)
def test_garbage_objects_of_every_kind_never_crash_the_informers_compute_or_sync(
    objects: dict[str, list[Any]],
):
    api = StaticApi()
    api.items["Namespace"] = [{"metadata": {"name": "x"}}]
    api.items["Pod"] = [pod("x", "good", "10.244.1.2")]
    for kind, items in objects.items():
        api.items[kind] = api.items[kind] + items
    dp = FakeDatapath()
    agent = make_agent(api, dp, Routes({"10.244.1.2": 7}))
    assert agent.reconcile(full=True), agent.status()["errors"]
    desired, pod_ifindex = dp.last
    if "x/good" in desired.endpoints:  # a garbage pod named x/good may legitimately replace it
        assert pod_ifindex.get("x/good") == 7
    st_ = agent.status()
    assert all(set(e) == {"object", "field", "message"} for e in st_["errors"])
    json.dumps(st_)  # /status stays serializable whatever the input


def test_an_invalid_policy_is_reported_by_object_and_field_and_its_pods_stay_isolated_with_the_valid_rules():
    api = StaticApi()
    api.items["Namespace"] = [{"metadata": {"name": "x"}}, {"metadata": {"name": "y"}}]
    api.items["Pod"] = [pod("x", "a", "10.244.1.2"), pod("y", "b", "10.244.1.3")]
    bad = allow_ports("x", "bad", [80])
    bad["spec"]["ingress"].append({"ports": [{"port": "not a port!"}]})
    api.items["NetworkPolicy"] = [bad]
    dp = FakeDatapath()
    agent = make_agent(api, dp, Routes({"10.244.1.2": 7, "10.244.1.3": 8}))
    assert agent.reconcile()
    desired, _ = dp.last
    assert desired.endpoints["x/a"].ingress_isolated and len(desired.endpoints["x/a"].entries) >= 1
    assert not desired.endpoints["y/b"].ingress_isolated  # everything else keeps working
    policy = agent.status()["policies"]["x/bad"]
    assert policy["selected_pods"] == 1 and policy["generation"] == 1
    assert policy["errors"] and policy["errors"][0]["field"].startswith("spec.ingress[1]")
    assert any(e["object"] == "NetworkPolicy x/bad" for e in agent.status()["errors"])


# ------------------------------------------------------------------------------------------ capacity


def test_endpoints_whose_entries_overflow_the_policy_map_fail_closed_and_recover_when_room_returns():
    api = StaticApi()
    api.items["Namespace"] = [{"metadata": {"name": "x"}}]
    api.items["Pod"] = [pod("x", n, f"10.244.1.{i + 2}") for i, n in enumerate("abc")]
    api.items["NetworkPolicy"] = [allow_ports("x", "many", [80, 81, 82, 83])]
    dp = FakeDatapath({"vg_policy": 9, "vg_endpoints": 16})
    agent = make_agent(api, dp, Routes({"10.244.1.2": 2, "10.244.1.3": 3, "10.244.1.4": 4}))
    assert agent.reconcile()
    desired, pod_ifindex = dp.last
    per_pod = len(desired.endpoints["x/a"].entries)
    assert per_pod >= 4 and 2 * per_pod <= 9 < 3 * per_pod  # the test's premise: room for two
    assert sorted(desired.endpoints) == ["x/a", "x/b"] and pod_ifindex["x/c"] == 4  # x/c: PENDING
    assert metric(agent, "vethguard_datapath_map_overflow_total", map="vg_policy") == 1
    st_ = agent.status()
    assert [o["pod"] for o in st_["overflow"]] == ["x/c"]
    assert any(e["object"] == "Pod x/c" and e["field"] == "map vg_policy" for e in st_["errors"])
    assert st_["policies"]["x/many"]["errors"]
    # a pass without changes does not count the same overflow twice
    assert agent.reconcile(full=True)
    assert metric(agent, "vethguard_datapath_map_overflow_total", map="vg_policy") == 1
    # room returns: a narrower policy
    api.items["NetworkPolicy"] = [allow_ports("x", "many", [80], generation=2)]
    api.rv = 2
    relist(agent.sources)  # type: ignore[arg-type]
    assert agent.reconcile()
    desired, _ = dp.last
    assert sorted(desired.endpoints) == ["x/a", "x/b", "x/c"]
    assert agent.status()["overflow"] == [] and agent.status()["policies"]["x/many"]["generation"] == 2
    assert metric(agent, "vethguard_datapath_overflowed_endpoints") == 0


def test_fitting_keeps_endpoints_that_were_enforced_before_newcomers():
    api = StaticApi()
    api.items["Pod"] = [pod("x", n, f"10.244.1.{i + 2}") for i, n in enumerate("ab")]
    api.items["NetworkPolicy"] = [allow_ports("x", "p", [80, 81])]
    dp = FakeDatapath()
    agent = make_agent(api, dp, Routes({"10.244.1.2": 2, "10.244.1.3": 3}))
    assert agent.reconcile()
    desired, pod_ifindex = dp.last
    n = len(desired.endpoints["x/b"].entries)
    fit = fit_capacity(desired, pod_ifindex, {"vg_policy": n}, prefer=frozenset({"x/b"}))
    assert list(fit.desired.endpoints) == ["x/b"] and set(fit.overflow) == {"x/a"}
    assert fit.pod_ifindex == pod_ifindex  # x/a stays attached, as a PENDING endpoint


def test_fitting_counts_a_shared_tier_profile_once_and_keeps_only_the_profiles_of_admitted_endpoints():
    api = StaticApi()
    api.items["Pod"] = [pod("x", n, f"10.244.1.{i + 2}") for i, n in enumerate("abc")]
    api.items["NetworkPolicy"] = [allow_ports("x", "p", [80])]
    cnp = {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "deny-many", "resourceVersion": "1"},
        "spec": {
            "tier": "Admin",
            "priority": 1,
            "subject": {"namespaces": {}},
            "ingress": [
                {
                    "action": "Deny",
                    "from": [{"namespaces": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": p}}} for p in range(1000, 1020)],
                }
            ],
        },
    }
    api.items["ClusterNetworkPolicy"] = [cnp]
    dp = FakeDatapath()
    agent = make_agent(api, dp, Routes({"10.244.1.2": 2, "10.244.1.3": 3, "10.244.1.4": 4}))
    assert agent.reconcile()
    desired, pod_ifindex = dp.last
    profiles = {ep.tier_profile for ep in desired.endpoints.values()}
    assert len(profiles) == 1 and 0 not in profiles  # one profile for the three pods
    [profile] = profiles
    own = sum(len(ep.entries) for ep in desired.endpoints.values())
    shared = len(desired.tier_profiles[profile])
    everything = fit_capacity(desired, pod_ifindex, {"vg_policy": own + shared})
    assert not everything.overflow  # the profile counted once, not once per pod
    a_only = fit_capacity(desired, pod_ifindex, {"vg_policy": len(desired.endpoints["x/a"].entries) + shared})
    assert list(a_only.desired.endpoints) == ["x/a"] and set(a_only.overflow) == {"x/b", "x/c"}
    assert set(a_only.desired.tier_profiles) == {profile}
    none = fit_capacity(desired, pod_ifindex, {"vg_policy": shared - 1})
    assert not none.desired.endpoints and not none.desired.tier_profiles


def test_an_endpoints_map_overflow_leaves_the_extra_veths_without_an_entry():
    api = StaticApi()
    api.items["Pod"] = [pod("x", n, f"10.244.1.{i + 2}") for i, n in enumerate("abc")]
    dp = FakeDatapath({"vg_endpoints": 2})
    agent = make_agent(api, dp, Routes({"10.244.1.2": 2, "10.244.1.3": 3, "10.244.1.4": 4}))
    assert agent.reconcile()
    _, pod_ifindex = dp.last
    assert pod_ifindex == {"x/a": 2, "x/b": 3}
    assert dp.attached == {2, 3, 4}  # x/c carries the programs with no endpoint: DROP_NO_ENDPOINT
    assert metric(agent, "vethguard_datapath_map_overflow_total", map="vg_endpoints") == 1


# ------------------------------------------------------------------------------------------ new veths


def test_a_new_veth_no_pod_claims_is_pending_until_the_sync_that_writes_its_policy():
    api = StaticApi()
    api.items["Pod"] = [pod("x", "a", "10.244.1.2")]
    api.items["NetworkPolicy"] = [allow_ports("x", "p", [80])]
    dp = FakeDatapath()
    lw = FakeLinkWatch()
    routes = Routes({"10.244.1.2": 2})
    agent = make_agent(api, dp, routes, lw)
    assert agent.reconcile()
    lw.appeared[9] = 0.0  # a veth appears (netlink), its pod is not in the API yet
    assert agent.reconcile()
    desired, pod_ifindex = dp.last
    assert pod_ifindex[unclaimed_key(9)] == 9 and unclaimed_key(9) not in desired.endpoints  # PENDING
    assert 9 in dp.attached and agent.status()["pending_interfaces"] == [9]
    assert metric(agent, "vethguard_endpoint_attach_latency_seconds_count") == 1
    assert metric(agent, "vethguard_endpoint_enforce_latency_seconds_count") == 0
    # the pod arrives: the same sync drops the placeholder and writes the real endpoint
    api.items["Pod"].append(pod("x", "b", "10.244.1.9"))
    api.rv = 3
    relist(agent.sources)  # type: ignore[arg-type]
    routes.by_ip["10.244.1.9"] = 9
    syncs = len(dp.synced)
    assert agent.reconcile()
    assert len(dp.synced) == syncs + 1
    desired, pod_ifindex = dp.last
    assert pod_ifindex == {"x/a": 2, "x/b": 9} and desired.endpoints["x/b"].ingress_isolated
    assert metric(agent, "vethguard_endpoint_enforce_latency_seconds_count") == 1
    assert agent.status()["pending_interfaces"] == []


def test_without_fail_closed_an_unclaimed_veth_is_left_alone():
    api = StaticApi()
    dp = FakeDatapath()
    lw = FakeLinkWatch()
    lw.appeared[9] = 0.0
    agent = make_agent(api, dp, Routes(), lw, fail_closed=False)
    assert agent.reconcile()
    assert dp.last[1] == {} and dp.attached == set()


def test_the_loop_runs_a_pass_as_soon_as_netlink_wakes_it():
    api = StaticApi()
    dp = FakeDatapath()
    lw = FakeLinkWatch()
    agent = make_agent(api, dp, Routes(), lw, rescan_seconds=3600, resync_seconds=3600)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if dp.synced:
                break
            threading.Event().wait(0.01)
        lw.appeared[5] = 0.0
        agent.wake()
        for _ in range(500):  # the rescan is an hour away: only the wake-up can attach it
            if 5 in dp.attached:
                break
            threading.Event().wait(0.01)
        assert 5 in dp.attached
    finally:
        agent.stop()
        thread.join(5)
        agent.close()  # stops the informer threads too


# ------------------------------------------------------------------------------------------ operations


def test_drops_by_reason_stay_monotonic_when_an_endpoint_and_its_counters_go_away():
    api = StaticApi()
    dp = FakeDatapath()
    agent = make_agent(api, dp, Routes())
    dp.counter_values = {(2, 64, 0): (5, 500), (3, 64, 1): (2, 200), (2, 1, 0): (99, 0)}
    agent.refresh_datapath_metrics()
    assert metric(agent, "vethguard_datapath_drops_total", reason="DROP_POLICY") == 7
    assert metric(agent, "vethguard_datapath_drops_total", direction="ingress", reason="DROP_POLICY") == 5
    assert metric(agent, "vethguard_datapath_drops_total", direction="egress", reason="DROP_POLICY") == 2
    dp.counter_values = {(3, 64, 1): (4, 400)}  # endpoint 2 removed
    agent.refresh_datapath_metrics()
    assert metric(agent, "vethguard_datapath_drops_total", reason="DROP_POLICY") == 9
    dp.counter_values = {(3, 64, 1): (4, 400), (2, 68, 0): (1, 60)}  # index 2 reused, pending drop
    agent.refresh_datapath_metrics()
    assert metric(agent, "vethguard_datapath_drops_total", reason="DROP_PENDING") == 1
    assert metric(agent, "vethguard_datapath_drops_total", reason="DROP_POLICY") == 9
    agent.capacity.limits(dp)
    assert metric(agent, "vethguard_datapath_map_capacity", map="vg_policy") == 0  # no capacity given


def test_readiness_requires_synced_attached_and_reconciled():
    api = StaticApi()
    api.items["Pod"] = [pod("x", "a", "10.244.1.2")]
    dp = FakeDatapath()
    agent = make_agent(api, dp, Routes({"10.244.1.2": 2}))
    assert not agent.is_ready()
    assert agent.reconcile()
    assert agent.is_ready()

    def broken_attach(ifindex: int) -> None:
        raise OSError("tc: no such device")

    dp.attach = broken_attach  # type: ignore[method-assign]
    assert agent.reconcile(full=True)  # the maps are synced, but a veth is not attached
    assert not agent.is_ready() and not agent.status()["ready"]
    del dp.attach
    assert agent.reconcile(full=True) and agent.is_ready()


def test_realization_lag_is_measured_from_event_arrival_to_the_sync_that_realized_it():
    api = StaticApi()
    dp = FakeDatapath()
    agent = make_agent(api, dp, Routes())
    from controller.agent.cluster_events import Event

    agent.note_event(Event("Pod", "ADDED", "x/a", None, "5"), now=0.0)
    agent.note_event(Event("Pod", "BOOKMARK", "", None, "6"), now=0.0)  # bookmarks are not changes
    assert agent.reconcile()
    assert metric(agent, "vethguard_agent_realization_lag_seconds_count") == 1


def test_a_datapath_configuration_error_stops_the_agent_instead_of_retrying():
    api = StaticApi()

    def factory(node: str, pin_root: str) -> FakeDatapath:
        raise VethguardError("no bpf filesystem is mounted at /sys/fs/bpf; mount it with ...")

    agent = Agent(
        AgentConfig(node="node-1", health_addr=None),
        api.sources(),
        datapath_factory=factory,
        discovery=Routes(),
    )
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert agent.fatal is not None and "bpf filesystem" in str(agent.fatal)
    agent.close()


@pytest.mark.parametrize("argv", [["--no-fail-closed"], []])
def test_the_agent_command_has_a_fail_closed_switch_and_an_env_resync_default(argv, monkeypatch):
    import argparse

    from controller.agent import cli as agent_cli

    monkeypatch.setenv("VETHGUARD_RESYNC_SECONDS", "2.5")
    parser = argparse.ArgumentParser()
    agent_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["agent", "--node", "n", *argv])
    assert args.fail_closed is (argv == []) and args.resync_seconds == 2.5


def test_the_status_reports_each_cluster_network_policy_with_its_tier_selected_pods_and_errors():
    api = StaticApi()
    api.items["Pod"] = [pod("x", n, f"10.244.1.{i + 2}") for i, n in enumerate("ab")]

    def cnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name, "resourceVersion": "1"},
            "spec": spec,
        }

    api.items["ClusterNetworkPolicy"] = [
        cnp(
            "all-x",
            {
                "tier": "Baseline",
                "priority": 3,
                "subject": {"namespaces": {}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
            },
        ),
        cnp(
            "broken",
            {
                "tier": "Admin",
                "priority": 1,
                "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a"}}}},
                "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0/33"]}]}],
            },
        ),
    ]
    dp = FakeDatapath()
    agent = make_agent(api, dp, Routes({"10.244.1.2": 2, "10.244.1.3": 3}))
    assert agent.reconcile()
    status = json.loads(json.dumps(agent.status()))["cluster_policy_status"]
    assert status["all-x"] == {"tier": "Baseline", "priority": 3, "selected_pods": 2, "errors": []}
    broken = status["broken"]
    assert (broken["tier"], broken["priority"]) == ("Admin", 1)
    assert [e["field"] for e in broken["errors"]] == ["spec.egress[0].to[0].networks[0]"]
