"""Egress to a Service is judged by the backend it reaches (issue 6, item 4), with real packets in
a 2-node lab: the ClusterIP and the NodePort, a backend on the client's node and on the other
node, rules by pod selector with a numbered and a named port, a Service whose backends are
partly allowed, and ingress still judged on the backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.labs import Lab, lab_up

pytestmark = [pytest.mark.root, pytest.mark.lab]


def backend(name: str, node: str, app: str) -> str:
    return f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: {app}, tier: mixed}}}}
spec:
  nodeName: {node}
  containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]
"""


def service(name: str, selector: str, node_port: int) -> str:
    return f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  type: NodePort
  selector: {{{selector}}}
  ports: [{{port: 80, targetPort: http, nodePort: {node_port}}}]
"""


def client(name: str, role: str) -> str:
    return f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{role: {role}}}}}
spec: {{nodeName: node-1, containers: [{{name: c}}]}}
"""


MODEL = (
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
    "---\napiVersion: lab.vethguard.dev/v1alpha1\nkind: ExternalHost\nmetadata: {name: outside}\n"
    "spec: {ip: 198.51.100.9}\n"
    + backend("api-near", "node-1", "api")
    + backend("api-far", "node-2", "api")
    + backend("secret-near", "node-1", "secret")
    + backend("secret-far", "node-2", "secret")
    + service("api-near", "name-is: api-near", 30101)
    + service("api-far", "name-is: api-far", 30102)
    + service("secret-near", "name-is: secret-near", 30103)
    + service("secret-far", "name-is: secret-far", 30104)
    + service("mixed", "tier: mixed", 30105)
    + client("by-name", "by-name")
    + client("by-number", "by-number")
    + client("elsewhere", "elsewhere")
    + client("open", "open")
)
# Each single-backend Service selects its pod by a label of its own.
for pod in ("api-near", "api-far", "secret-near", "secret-far"):
    MODEL = MODEL.replace(
        f"name: {pod}, namespace: shop, labels: {{",
        f"name: {pod}, namespace: shop, labels: {{name-is: {pod}, ",
    )

EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: by-name, namespace: shop}
spec:
  podSelector: {matchLabels: {role: by-name}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: by-number, namespace: shop}
spec:
  podSelector: {matchLabels: {role: by-number}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 8080, protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: elsewhere, namespace: shop}
spec:
  podSelector: {matchLabels: {role: elsewhere}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: nothing-here}}}]}]
"""
SINGLE = ["svc/shop/api-near", "svc/shop/api-far", "svc/shop/secret-near", "svc/shop/secret-far"]
# On a bridge (flannel-like), a same-node backend answers the client straight over the bridge,
# around the node's conntrack, unless bridge netfilter is on (kube-proxy's requirement for such
# CNIs). The lab leaves br_netfilter off because loading it would change bridges of the
# machine's own namespace, so on a bridge lab only other-node backends are reached by ClusterIP
# (NodePort traffic is masqueraded to the node and comes back through it).
CNI: dict[str, str] = {}


def single(lab: Lab) -> list[str]:
    return SINGLE if CNI[lab.name] == "routed" else [t for t in SINGLE if t.endswith("-far")]


CLIENTS = ["shop/by-name", "shop/by-number", "shop/elsewhere", "shop/open"]


@pytest.fixture(scope="module", params=["routed", "bridge"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A 2-node lab per pod networking mode: with a bridge (flannel-like) the deferred packet
    reaches a same-node backend through cni0 and the bridge, not a host route."""
    with lab_up(MODEL, "--nodes", "2", "--cni", request.param) as made:
        CNI[made.name] = request.param
        made.cli("apply", "-f", "-", stdin=EGRESS)
        yield made


def expected(source: str, target: str) -> bool:
    if source == "shop/open":
        return True
    if source == "shop/elsewhere":
        return False
    return "api-" in target  # by-name / by-number allow app=api on 8080 (http) only


def test_a_clusterip_is_judged_by_the_backend_behind_it_on_either_node(lab: Lab) -> None:
    targets = single(lab)
    result = lab.probe(80, "TCP", 4, "--from", *CLIENTS, "--to", *targets)
    assert result == {(s, t): expected(s, t) for s in CLIENTS for t in targets}


def test_a_node_port_of_the_clients_node_is_judged_by_the_backend_behind_it(lab: Lab) -> None:
    node1 = lab.status()["nodes"]["node-1"]["ips"][0]
    for port, backend_name in (
        (30101, "api-near"),
        (30102, "api-far"),
        (30103, "secret-near"),
        (30104, "secret-far"),
    ):
        result = lab.probe(port, "TCP", 4, "--from", *CLIENTS, "--to", node1)
        want = {(s, node1): expected(s, f"svc/shop/{backend_name}") for s in CLIENTS}
        assert result == want, (port, backend_name)


def test_the_pod_port_itself_is_still_judged_directly(lab: Lab) -> None:
    direct = ["shop/api-near", "shop/api-far", "shop/secret-near", "shop/secret-far"]
    result = lab.probe(8080, "TCP", 4, "--from", *CLIENTS, "--to", *direct)
    assert result == {(s, t): expected(s, "svc/" + t) for s in CLIENTS for t in direct}


def test_a_service_with_allowed_and_denied_backends_connects_exactly_when_an_allowed_one_is_picked(
    lab: Lab,
) -> None:
    if CNI[lab.name] != "routed":
        # Two of the backends share the client's node (not reachable by ClusterIP on a bridge
        # lab): only the client allowed nothing has a certain outcome, whichever is picked.
        for _ in range(6):
            result = lab.probe(80, "TCP", 4, "--from", "shop/elsewhere", "--to", "svc/shop/mixed")
            assert result == {("shop/elsewhere", "svc/shop/mixed"): False}
        return
    # kube-proxy picks one of the four backends at random per connection: an api backend is
    # reached, a secret one is dropped. 24 attempts see both outcomes (chance of not: 2 * 2^-24).
    outcomes = []
    for _ in range(24):
        outcomes.append(
            lab.probe(80, "TCP", 4, "--from", "shop/by-name", "--to", "svc/shop/mixed")[
                ("shop/by-name", "svc/shop/mixed")
            ]
        )
    assert True in outcomes and False in outcomes, outcomes
    # The open client reaches the same Service every time; the client allowed nothing never does.
    for _ in range(6):
        result = lab.probe(
            80, "TCP", 4, "--from", "shop/open", "shop/elsewhere", "--to", "svc/shop/mixed", "--timeout", "3"
        )
        assert result == {("shop/open", "svc/shop/mixed"): True, ("shop/elsewhere", "svc/shop/mixed"): False}


def test_ingress_is_still_judged_on_the_backend_after_the_clients_egress_allowed_it(lab: Lab) -> None:
    policy = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-by-number, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {role: by-number}}}]}]
"""
    lab.cli("apply", "-f", "-", stdin=policy)
    try:
        targets = [t for t in single(lab) if "api-" in t]
        result = lab.probe(80, "TCP", 4, "--from", "shop/by-name", "shop/by-number", "--to", *targets)
        assert result == {
            **{("shop/by-name", t): False for t in targets},  # its egress allows, the ingress does not
            **{("shop/by-number", t): True for t in targets},
        }
    finally:
        lab.cli("delete", "-f", "-", stdin=policy)


def test_changing_the_egress_policy_changes_what_the_clusterip_reaches(lab: Lab) -> None:
    widened = EGRESS.replace("{app: nothing-here}", "{app: secret}")
    lab.cli("apply", "-f", "-", stdin=widened)
    try:
        result = lab.probe(80, "TCP", 4, "--from", "shop/elsewhere", "--to", *single(lab))
        assert result == {("shop/elsewhere", t): "secret-" in t for t in single(lab)}
    finally:
        lab.cli("apply", "-f", "-", stdin=EGRESS)
    result = lab.probe(80, "TCP", 4, "--from", "shop/elsewhere", "--to", *single(lab))
    assert not any(result.values())


def test_node_port_traffic_masqueraded_to_a_node_address_is_judged_by_that_address_not_as_the_node(
    lab: Lab,
) -> None:
    nodes = lab.status()["nodes"]
    node1, node2 = nodes["node-1"]["ips"][0], nodes["node-2"]["ips"][0]
    only_node1 = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: api-far-from-node-1, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{name-is: api-far}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: {node1}/32}}}}]}}]
"""
    lab.cli("apply", "-f", "-", stdin=only_node1)
    try:
        # api-far lives on node-2. Through node-1's NodePort it arrives from node-1's address,
        # which the rule allows; straight from the external host it is not allowed.
        result = lab.probe(30102, "TCP", 4, "--from", "ext/outside", "--to", node1)
        assert result == {("ext/outside", node1): True}
        assert lab.probe(8080, "TCP", 4, "--from", "ext/outside", "--to", "shop/api-far") == {
            ("ext/outside", "shop/api-far"): False
        }
        lab.cli("apply", "-f", "-", stdin=only_node1.replace(f"{node1}/32", "192.0.2.1/32"))
        # Now node-1 is not allowed. Through node-2's own NodePort it arrives from node-2's own
        # address, but the node only forwarded it for an outside client: the node exemption
        # (kubelet probes, the node's own traffic) is for what the node itself sends, so this
        # is judged as outside traffic and denied too (bpf/lib/trust.h).
        result = lab.probe(30102, "TCP", 4, "--from", "ext/outside", "--to", node1, node2)
        assert result == {("ext/outside", node1): False, ("ext/outside", node2): False}
    finally:
        lab.cli("delete", "-f", "-", stdin=only_node1)
