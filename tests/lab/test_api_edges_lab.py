"""Edges of the NetworkPolicy API with real packets (issue #5 item 6), through the lab CLI.

One two-node lab with agents serves every test of this module; each test removes the
policies it applied. The same edges are covered without packets in
tests/unit/test_api_edges.py; here the question is whether the kernel agrees.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from controller.lab.apiserver import UNVALIDATED_PATH
from controller.lab.client import LabClient, wait_realized
from controller.lab.state import LabPaths
from tests.support.labs import Lab, lab_up

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.slow,
]


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(
    key: str, node: int, labels: dict[str, str], ports: list[tuple[str | None, int, str]]
) -> dict[str, Any]:
    namespace, name = key.split("/")
    containers = [
        {
            "name": f"c{i}",
            "image": "agnhost",
            "ports": [{"containerPort": n, "protocol": p, **({"name": pn} if pn else {})}],
        }
        for i, (pn, n, p) in enumerate(ports)
    ] or [{"name": "main", "image": "agnhost"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"nodeName": f"node-{node}", "containers": containers},
    }


def relabel(key: str, labels: dict[str, str]) -> dict[str, Any]:
    """A metadata-only Pod manifest: the lab changes the labels and keeps ports and node."""
    namespace, name = key.split("/")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
    }


def external(name: str, *ips: str) -> dict[str, Any]:
    return {
        "apiVersion": "lab.vethguard.dev/v1alpha1",
        "kind": "ExternalHost",
        "metadata": {"name": name},
        "spec": {"ip": list(ips), "ports": [{"port": 80, "protocol": "TCP"}]},
    }


def policy(key: str, spec: dict[str, Any]) -> dict[str, Any]:
    namespace, name = key.split("/")
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }


CLIENT_LABELS = {"pod": "client", "role": "client"}
MODEL = [
    ns("x", team="a"),
    ns("y", team="b"),
    pod("x/client", 1, CLIENT_LABELS, [(None, 80, "TCP")]),
    pod(
        "x/b",
        2,
        {"pod": "b"},
        [
            ("http", 8080, "TCP"),
            ("dns", 53, "TCP"),
            ("dns", 5353, "UDP"),
            (None, 80, "TCP"),
            (None, 65534, "TCP"),
            (None, 65535, "TCP"),
        ],
    ),
    pod("x/c", 2, {"pod": "c"}, [(None, 8080, "TCP"), (None, 80, "TCP"), (None, 9001, "UDP")]),
    pod("y/d", 1, {"pod": "d"}, [(None, 80, "TCP")]),
    external("inner", "10.1.2.3", "2001:db8:1:2::3"),
    external("mid", "10.2.0.9", "2001:db8:2::9"),
    external("far", "11.0.0.1", "2001:db9::1"),
]


class EdgeLab:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lab = Lab(name, timeout=300)
        self.cli = self.lab.cli
        self.applied: list[dict[str, Any]] = []

    def apply(self, *docs: dict[str, Any]) -> None:
        self.cli("apply", "-f", "-", stdin=yaml.safe_dump_all(list(docs), sort_keys=False))
        self.applied += [d for d in docs if d["kind"] == "NetworkPolicy"]

    def apply_unvalidated(self, doc: dict[str, Any]) -> None:
        """Store `doc` without the API server's validation (POST /lab/v1/unvalidated), as an
        API server of another version could have admitted it, and wait as `lab apply` does
        until every agent has realized it."""
        client = LabClient(LabPaths(self.name))
        code, stored = client.request("POST", UNVALIDATED_PATH, doc)
        assert code == 200, stored
        if doc["kind"] == "NetworkPolicy":
            self.applied.append(doc)
        wait_realized(client, int(stored["metadata"]["resourceVersion"]), 300)

    def delete(self, *docs: dict[str, Any]) -> None:
        self.cli(
            "delete", "-f", "-", "--ignore-not-found", stdin=yaml.safe_dump_all(list(docs), sort_keys=False)
        )

    def reset(self) -> None:
        """Delete every policy a test applied and restore the model's labels."""
        if self.applied:
            self.delete(*self.applied)
            self.applied.clear()
        self.apply(ns("x", team="a"), ns("y", team="b"), relabel("x/client", CLIENT_LABELS))

    def probe(self, port: int, protocol: str, family: int, src: list[str], dst: list[str]) -> dict[str, bool]:
        """{"src>dst": connected}; a blocked cell is probed once more (packet loss, not policy)."""
        out: dict[str, bool] = {}
        for s in src:
            for d in dst:
                for _ in range(2):
                    (connected,) = self.lab.probe(port, protocol, family, "--from", s, "--to", d).values()
                    out[f"{s}>{d}"] = connected
                    if connected:
                        break
        return out

    def ip(self, key: str, family: int) -> str:
        ips = self.lab.status()["pods"][key]["ips"]
        return next(ip for ip in ips if (":" in ip) == (family == 6))


@pytest.fixture(scope="module")
def edge_lab() -> Iterator[EdgeLab]:
    with lab_up(yaml.safe_dump_all(MODEL, sort_keys=False), "--nodes", "2", timeout=600) as made:
        yield EdgeLab(made.name)


@pytest.fixture
def lab(edge_lab: EdgeLab) -> Iterator[EdgeLab]:
    try:
        yield edge_lab
    finally:
        edge_lab.reset()


@pytest.mark.parametrize("family", [4, 6])
def test_named_ports_open_only_on_pods_that_declare_them_and_per_protocol(lab: EdgeLab, family: int) -> None:
    lab.apply(
        policy(
            "x/named",
            {
                "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]},
                "ingress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}]}],
            },
        )
    )
    src = ["x/client"]
    assert lab.probe(8080, "TCP", family, src, ["x/b", "x/c"]) == {
        "x/client>x/b": True,
        "x/client>x/c": False,
    }
    assert lab.probe(5353, "UDP", family, src, ["x/b"]) == {"x/client>x/b": True}
    assert lab.probe(53, "TCP", family, src, ["x/b"]) == {"x/client>x/b": False}  # dns on TCP not named
    assert lab.probe(80, "TCP", family, src, ["x/b", "x/c"]) == {"x/client>x/b": False, "x/client>x/c": False}


def test_end_port_ranges_hold_their_bounds(lab: EdgeLab) -> None:
    to_b = {"podSelector": {"matchLabels": {"pod": "b"}}}
    lab.apply(policy("x/range", {**to_b, "ingress": [{"ports": [{"port": 65535, "endPort": 65535}]}]}))
    for family in (4, 6):
        got = {p: lab.probe(p, "TCP", family, ["x/client"], ["x/b"])["x/client>x/b"] for p in (65534, 65535)}
        assert got == {65534: False, 65535: True}, family
    lab.apply(policy("x/range", {**to_b, "ingress": [{"ports": [{"port": 1, "endPort": 65534}]}]}))
    got = {p: lab.probe(p, "TCP", 4, ["x/client"], ["x/b"])["x/client>x/b"] for p in (80, 65534, 65535)}
    assert got == {80: True, 65534: True, 65535: False}
    lab.apply(policy("x/range", {**to_b, "ingress": [{"ports": [{"port": 80, "endPort": 80}]}]}))
    got = {p: lab.probe(p, "TCP", 6, ["x/client"], ["x/b"])["x/client>x/b"] for p in (80, 8080)}
    assert got == {80: True, 8080: False}


def block_policy(name: str, v4_except: str, v6_except: str) -> dict[str, Any]:
    return policy(
        f"x/{name}",
        {
            "podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [
                {
                    "from": [
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": [v4_except]}},
                        {"ipBlock": {"cidr": "2001:db8::/32", "except": [v6_except]}},
                    ]
                }
            ],
        },
    )


@pytest.mark.parametrize("family", [4, 6])
def test_overlapping_ip_blocks_of_several_policies_add_up(lab: EdgeLab, family: int) -> None:
    p1 = block_policy("blocks1", "10.1.0.0/16", "2001:db8:1::/48")
    p2 = block_policy("blocks2", "10.2.0.0/16", "2001:db8:2::/48")
    lab.apply(p1, p2)
    ext = ["ext/inner", "ext/mid", "ext/far"]
    got = {k: v for s in ext for k, v in lab.probe(80, "TCP", family, [s], ["x/b"]).items()}
    assert got == {"ext/inner>x/b": True, "ext/mid>x/b": True, "ext/far>x/b": False}
    lab.delete(p2)
    got = {k: v for s in ext[:2] for k, v in lab.probe(80, "TCP", family, [s], ["x/b"]).items()}
    assert got == {"ext/inner>x/b": False, "ext/mid>x/b": True}


def test_an_except_equal_to_its_cidr_drops_that_rule_and_keeps_the_pod_isolated(lab: EdgeLab) -> None:
    """kube-apiserver rejects this ("must be a strict subset of `cidr`") and so does the lab's
    API server (422, checked first). An API server of another version could still have admitted
    it, so it is written straight into the lab's store (POST /lab/v1/unvalidated) and the agent
    meets it: it reports the field and drops the whole rule."""
    bad = policy(
        "x/bad-except",
        {
            "podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.2.0.0/16", "except": ["10.2.0.0/16"]}}]},
                {"ports": [{"port": 65534}]},
            ],
        },
    )
    refused = lab.cli("apply", "-f", "-", stdin=yaml.safe_dump(bad, sort_keys=False), check=False)
    assert refused.returncode != 0 and "must be a strict subset of `cidr`" in refused.stderr
    lab.apply_unvalidated(bad)
    assert lab.probe(80, "TCP", 4, ["ext/mid"], ["x/b"]) == {"ext/mid>x/b": False}
    assert lab.probe(65534, "TCP", 4, ["ext/mid"], ["x/b"]) == {"ext/mid>x/b": True}
    assert lab.probe(80, "TCP", 4, ["ext/mid"], ["x/c"]) == {"ext/mid>x/c": True}


def test_a_policy_waiting_in_an_empty_namespace_applies_to_the_pod_that_appears(lab: EdgeLab) -> None:
    late = pod("late/e", 2, {"app": "db"}, [(None, 80, "TCP"), (None, 8080, "TCP")])
    only_80 = policy(
        "late/only-80",
        {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": 80}]}]},
    )
    lab.apply(ns("late"), only_80)
    try:
        lab.apply(late)
        for family in (4, 6):
            assert lab.probe(80, "TCP", family, ["x/client"], ["late/e"]) == {"x/client>late/e": True}
            assert lab.probe(8080, "TCP", family, ["x/client"], ["late/e"]) == {"x/client>late/e": False}
    finally:
        lab.delete(late)


def test_relabelling_a_namespace_moves_its_pods_in_and_out_of_a_namespace_selector(lab: EdgeLab) -> None:
    lab.apply(
        policy(
            "x/trusted-ns",
            {
                "podSelector": {"matchLabels": {"pod": "b"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"trusted": "yes"}}}]}],
            },
        )
    )
    assert lab.probe(80, "TCP", 4, ["y/d"], ["x/b"]) == {"y/d>x/b": False}
    lab.apply(ns("y", team="b", trusted="yes"))
    assert lab.probe(80, "TCP", 6, ["y/d"], ["x/b"]) == {"y/d>x/b": True}
    assert lab.probe(80, "TCP", 4, ["x/client"], ["x/b"]) == {"x/client>x/b": False}
    lab.apply(ns("y", team="b"))
    assert lab.probe(80, "TCP", 4, ["y/d"], ["x/b"]) == {"y/d>x/b": False}


def test_a_policy_deleted_and_recreated_under_the_same_name_enforces_its_new_content(lab: EdgeLab) -> None:
    def version(port: int) -> dict[str, Any]:
        return policy(
            "x/same-name",
            {"podSelector": {"matchLabels": {"pod": "c"}}, "ingress": [{"ports": [{"port": port}]}]},
        )

    lab.apply(version(80))
    assert lab.probe(8080, "TCP", 4, ["x/client"], ["x/c"]) == {"x/client>x/c": False}
    lab.delete(version(80))
    assert lab.probe(8080, "TCP", 4, ["x/client"], ["x/c"]) == {"x/client>x/c": True}
    lab.apply(version(8080))
    assert lab.probe(8080, "TCP", 6, ["x/client"], ["x/c"]) == {"x/client>x/c": True}
    assert lab.probe(80, "TCP", 6, ["x/client"], ["x/c"]) == {"x/client>x/c": False}


# -- labels that change under open connections ---------------------------------------------------

# A UDP flow to x/c's echo responder on 9001: one datagram every 50 ms; each line of output is
# "<seconds since start> <1 if the echo came back within 200 ms else 0>".
FLOW_LIMIT = 60.0  # seconds; the flow stops earlier when the test writes a line to its stdin
FLOW = """
import select, socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(0.2)
s.bind(("", 40123))
start = time.monotonic()
while time.monotonic() - start < float(sys.argv[2]):
    if select.select([sys.stdin], [], [], 0)[0]:
        break  # the test says stop
    t = time.monotonic()
    s.sendto(b"x", (sys.argv[1], 9001))
    try:
        ok = s.recv(16) == b"x"
    except OSError:
        ok = False
    print(f"{t - start:.3f} {int(ok)}", flush=True)
    time.sleep(max(0.0, 0.05 - (time.monotonic() - t)))
"""


def run_flow(
    lab: EdgeLab, family: int, change_at: float, change: dict[str, Any], after: float = 5.0
) -> tuple[list[tuple[float, bool]], float]:
    """Run the UDP flow from x/client to x/c, apply `change` after `change_at` seconds, and stop
    the flow `after` seconds after `lab apply` returned (however long the apply took on a loaded
    machine, the flow is watched as long after it).

    Returns the samples and when `lab apply` returned, on the flow's clock or later (the
    flow's clock starts after the exec, so a sample at t happened at least t after launch)."""
    target = lab.ip("x/c", family)
    launched = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "lab",
            "exec",
            "--name",
            lab.name,
            "x/client",
            "--",
            sys.executable,
            "-c",
            FLOW,
            target,
            str(FLOW_LIMIT),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(change_at)
        lab.apply(change)
        applied = time.monotonic() - launched
        time.sleep(after)
        assert proc.stdin is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=FLOW_LIMIT + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return [(float(t), ok == "1") for t, ok in (line.split() for line in out.splitlines())], applied


ONLY_CLIENTS = policy(
    "x/clients-only",
    {
        "podSelector": {"matchLabels": {"pod": "c"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
    },
)


@pytest.mark.parametrize("family", [4, 6])
def test_a_relabelled_pod_that_stays_allowed_keeps_its_open_flow(lab: EdgeLab, family: int) -> None:
    lab.apply(ONLY_CLIENTS)
    samples, _ = run_flow(lab, family, 2.0, relabel("x/client", {**CLIENT_LABELS, "extra": "1"}))
    lost = [t for t, ok in samples[5:] if not ok]  # the first few absorb start-up
    assert len(samples) > 40 and len(lost) <= 2, lost


@pytest.mark.parametrize("family", [4, 6])
def test_a_relabelled_pod_that_loses_its_allowance_loses_its_open_flow_within_a_second(
    lab: EdgeLab, family: int
) -> None:
    lab.apply(ONLY_CLIENTS)
    samples, applied = run_flow(lab, family, 2.0, relabel("x/client", {"pod": "client"}))
    assert any(ok for t, ok in samples if t < 1.5), "the flow never worked before the change"
    after = [(t, ok) for t, ok in samples if t > applied + 1.0]
    assert len(after) > 10, f"the flow ended too soon after the change (apply returned at {applied:.1f}s)"
    late = [t for t, ok in after if ok]
    assert not late, f"echoes still came back more than 1s after the relabel was realized: {late[:5]}"
