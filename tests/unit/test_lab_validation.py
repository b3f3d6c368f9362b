"""The lab API server's validation (controller.lab.validation), pure: kube-apiserver's rules,
causes and messages, and agreement with the agent: whatever the server admits, the agent's
model reads without an error, so its fail-closed path is left for what a real cluster admits."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.compiler.parse import parse_network_policy
from controller.lab import validation as v
from controller.lab.store import BY_KIND, DEFAULTERS


def defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as the store holds it before validation: namespace filled in, API defaults set."""
    out = copy.deepcopy(obj)
    resource = BY_KIND[out["kind"]]
    if resource.namespaced:
        out["metadata"].setdefault("namespace", "default")
    defaulter = DEFAULTERS.get(resource.plural)
    if defaulter is not None:
        defaulter(out)
    return out


def check(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[v.FieldError]:
    resource = BY_KIND[obj["kind"]]
    return v.validate(resource.kind, resource.namespaced, defaulted(obj), old)


def policy(spec: Any, name: str = "p", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x", **meta},
        "spec": spec,
    }


def ingress_port(**port: Any) -> dict[str, Any]:
    return policy({"ingress": [{"ports": [port]}]})


def ingress_peer(peer: Any) -> dict[str, Any]:
    return policy({"ingress": [{"from": [peer]}]})


def causes(errors: list[v.FieldError]) -> list[tuple[str, str, str]]:
    return [(e.reason, e.field, e.body()) for e in errors]


# --- the issue's policy ----------------------------------------------------------------------

ISSUE_POLICY = policy({"podSelector": {"matchLabels": {"bad key!": "db"}}, "policyTypes": ["Bogus"]}, "deny")


def test_the_issue_s_policy_is_invalid_in_two_places_in_kube_apiserver_s_words() -> None:
    errors = check(ISSUE_POLICY)
    assert [(e.reason, e.field) for e in errors] == [
        (v.INVALID, "spec.podSelector.matchLabels"),
        (v.NOT_SUPPORTED, "spec.policyTypes[0]"),
    ]
    message = v.invalid_message("NetworkPolicy", "networking.k8s.io", "deny", errors)
    assert message.startswith(
        'NetworkPolicy.networking.k8s.io "deny" is invalid: [spec.podSelector.matchLabels: Invalid value: '
        "\"bad key!\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
        "and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used"
    )
    assert message.endswith(
        ', spec.policyTypes[0]: Unsupported value: "Bogus": supported values: "Ingress", "Egress"]'
    )
    details = v.invalid_details("NetworkPolicy", "networking.k8s.io", "deny", errors)
    assert details["name"] == "deny" and details["group"] == "networking.k8s.io"
    assert details["kind"] == "NetworkPolicy"
    assert details["causes"][1] == {
        "reason": "FieldValueNotSupported",
        "message": 'Unsupported value: "Bogus": supported values: "Ingress", "Egress"',
        "field": "spec.policyTypes[0]",
    }


def test_the_agent_reads_that_policy_fail_closed_in_both_directions() -> None:
    """Why the server must refuse it: the agent's fail-closed reading of `policyTypes: [Bogus]`."""
    parsed = parse_network_policy(defaulted(ISSUE_POLICY))
    assert parsed.errors
    assert parsed.isolates_ingress and parsed.isolates_egress


# --- NetworkPolicy rules ---------------------------------------------------------------------

IN = {"key": "app", "operator": "In", "values": ["a"]}
PORT_RANGE = "must be between 1 and 65535, inclusive"
NOT_A_CIDR = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
STRICT_SUBSET = "must be a strict subset of `cidr`"


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            policy({"podSelector": {"matchLabels": {"app": "no way"}}}),
            (v.INVALID, "spec.podSelector.matchLabels", 'Invalid value: "no way": a valid label must be'),
        ),
        (
            policy({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}),
            (
                v.REQUIRED,
                "spec.podSelector.matchExpressions[0].values",
                "Required value: must be specified when `operator` is 'In' or 'NotIn'",
            ),
        ),
        (
            policy(
                {"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": []}]}}
            ),
            (v.REQUIRED, "spec.podSelector.matchExpressions[0].values", "Required value"),
        ),
        (
            policy(
                {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}
            ),
            (
                v.FORBIDDEN,
                "spec.podSelector.matchExpressions[0].values",
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
        ),
        (
            policy({"podSelector": {"matchExpressions": [{**IN, "operator": "Equals"}]}}),
            (
                v.INVALID,
                "spec.podSelector.matchExpressions[0].operator",
                'Invalid value: "Equals": not a valid selector operator',
            ),
        ),
        (
            policy({"podSelector": {"matchExpressions": [{**IN, "key": "-app"}]}}),
            (v.INVALID, "spec.podSelector.matchExpressions[0].key", 'Invalid value: "-app": name part'),
        ),
        (
            policy({"podSelector": {"matchExpressions": [{**IN, "values": ["a", "b c"]}]}}),
            (
                v.INVALID,
                "spec.podSelector.matchExpressions[0].values[1]",
                'Invalid value: "b c": a valid label',
            ),
        ),
        (
            policy({"policyTypes": ["Ingress", "Egress", "Ingress"]}),
            (
                v.INVALID,
                "spec.policyTypes",
                'Invalid value: []string{"Ingress", "Egress", "Ingress"}: '
                "may not specify more than two policyTypes",
            ),
        ),
        (
            policy({"policyTypes": ["ingress"]}),
            (v.NOT_SUPPORTED, "spec.policyTypes[0]", 'Unsupported value: "ingress": supported values:'),
        ),
        (
            ingress_port(protocol="ICMP", port=80),
            (
                v.NOT_SUPPORTED,
                "spec.ingress[0].ports[0].protocol",
                'Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP"',
            ),
        ),
        (
            ingress_port(port=0),
            (v.INVALID, "spec.ingress[0].ports[0].port", f"Invalid value: 0: {PORT_RANGE}"),
        ),
        (ingress_port(port=65536), (v.INVALID, "spec.ingress[0].ports[0].port", "Invalid value: 65536")),
        (
            ingress_port(port="80"),
            (
                v.INVALID,
                "spec.ingress[0].ports[0].port",
                'Invalid value: "80": must contain at least one letter',
            ),
        ),
        (
            ingress_port(port="web--x"),
            (v.INVALID, "spec.ingress[0].ports[0].port", "must not contain consecutive hyphens"),
        ),
        (
            ingress_port(endPort=90),
            (
                v.INVALID,
                "spec.ingress[0].ports[0].endPort",
                "Invalid value: 90: may not be specified when `port` is not specified",
            ),
        ),
        (
            ingress_port(port="http", endPort=90),
            (
                v.INVALID,
                "spec.ingress[0].ports[0].endPort",
                "may not be specified when `port` is non-numeric",
            ),
        ),
        (
            ingress_port(port=90, endPort=80),
            (
                v.INVALID,
                "spec.ingress[0].ports[0].endPort",
                "Invalid value: 80: must be greater than or equal to `port`",
            ),
        ),
        (
            ingress_port(port=90, endPort=65536),
            (v.INVALID, "spec.ingress[0].ports[0].endPort", f"Invalid value: 65536: {PORT_RANGE}"),
        ),
        (ingress_peer({}), (v.REQUIRED, "spec.ingress[0].from[0]", "Required value: must specify a peer")),
        (
            ingress_peer({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}),
            (
                v.FORBIDDEN,
                "spec.ingress[0].from[0]",
                "Forbidden: may not specify both ipBlock and another peer",
            ),
        ),
        (
            ingress_peer({"ipBlock": {"cidr": ""}}),
            (v.REQUIRED, "spec.ingress[0].from[0].ipBlock.cidr", "Required value"),
        ),
        (
            ingress_peer({"ipBlock": {"cidr": "10.0.0.0/33"}}),
            (
                v.INVALID,
                "spec.ingress[0].from[0].ipBlock.cidr",
                f'Invalid value: "10.0.0.0/33": {NOT_A_CIDR}',
            ),
        ),
        (
            ingress_peer({"ipBlock": {"cidr": "10.2.0.0/16", "except": ["10.2.0.0/16"]}}),
            (
                v.INVALID,
                "spec.ingress[0].from[0].ipBlock.except[0]",
                f'Invalid value: "10.2.0.0/16": {STRICT_SUBSET}',
            ),
        ),
        (
            ingress_peer({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/16", "11.0.0.0/16"]}}),
            (v.INVALID, "spec.ingress[0].from[0].ipBlock.except[1]", STRICT_SUBSET),
        ),
        (
            ingress_peer({"ipBlock": {"cidr": "::/0", "except": ["10.0.0.0/16"]}}),
            (v.INVALID, "spec.ingress[0].from[0].ipBlock.except[0]", STRICT_SUBSET),
        ),
        (
            ingress_peer({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0"]}}),
            (v.INVALID, "spec.ingress[0].from[0].ipBlock.except[0]", NOT_A_CIDR),
        ),
        (
            policy({"egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "a/b"}}}]}]}),
            (v.INVALID, "spec.egress[0].to[0].namespaceSelector.matchLabels", 'Invalid value: "a/b"'),
        ),
        (
            policy({}, name="Deny_All"),
            (v.INVALID, "metadata.name", 'Invalid value: "Deny_All": a lowercase RFC 1123 subdomain'),
        ),
        (
            policy({}, labels={"app": "a b"}),
            (v.INVALID, "metadata.labels", 'Invalid value: "a b": a valid label must be'),
        ),
        (
            policy({}, annotations={"bad key!": "x"}),
            (v.INVALID, "metadata.annotations", 'Invalid value: "bad key!": name part'),
        ),
        (
            policy({}, annotations={"a": "x" * (256 * 1024)}),
            (v.TOO_LONG, "metadata.annotations", "Too long: must have at most 262144 bytes"),
        ),
    ],
)
def test_a_network_policy_against_kube_apiserver_s_rules_gets_the_same_cause(
    obj: dict[str, Any], expected: tuple[str, str, str]
) -> None:
    errors = check(obj)
    reason, field, body = expected
    assert [(e.reason, e.field) for e in errors] == [(reason, field)], causes(errors)
    assert body in errors[0].body()


@pytest.mark.parametrize(
    "spec",
    [
        {"policyTypes": ["Ingress", "Ingress"]},  # kube-apiserver checks the count, not repeats
        {"podSelector": {"matchExpressions": [{"key": "example.com/app", "operator": "DoesNotExist"}]}},
        {"podSelector": {"matchLabels": {"app": ""}}},
        {"ingress": [{"ports": [{"port": "http"}, {"port": 80, "endPort": 80}, {"protocol": "SCTP"}]}]},
        {"ingress": [{}], "egress": [{"ports": [{"port": 1, "endPort": 65535}]}]},
        {"ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}]}]},
        {"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1/8", "except": ["10.1.0.0/16", "10.2.0.0/16"]}}]}]},
        {"egress": [{"to": [{"ipBlock": {"cidr": "010.000.0.0/08"}}]}]},  # legacy CIDR parsing
        {"egress": [{"to": [{"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}}]}]},
    ],
)
def test_what_kube_apiserver_admits_is_admitted(spec: dict[str, Any]) -> None:
    assert check(policy(spec)) == []


def test_invalid_label_values_in_expressions_are_let_through_when_the_stored_selector_had_problems() -> None:
    """ValidationOptionsForNetworking: an object stored before the rule can still be changed."""
    legacy = defaulted(policy({"podSelector": {"matchExpressions": [{**IN, "values": ["a b"]}]}}))
    assert check(legacy) != []
    assert check(legacy, old=legacy) == []
    assert check(legacy, old=defaulted(policy({}))) != []


def test_repeated_problems_are_one_message_but_every_cause() -> None:
    errors = check(policy({"podSelector": {"matchLabels": {"a": "b c"}}, "ingress": [{"from": [{}, {}]}]}))
    assert len(errors) == 3
    message = v.invalid_message("NetworkPolicy", "networking.k8s.io", "p", errors)
    assert message.count("must specify a peer") == 2  # two fields: two messages
    same = [v.required("spec", "x"), v.required("spec", "x")]
    assert v.invalid_message("Pod", "", "a", same) == 'Pod "a" is invalid: spec: Required value: x'
    assert len(v.invalid_details("Pod", "", "a", same)["causes"]) == 2
    assert "group" not in v.invalid_details("Pod", "", "a", same)


# --- decoding: wrong JSON types and unknown fields --------------------------------------------


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (
            policy({"policyTypes": "Ingress"}),
            'NetworkPolicy in version "v1" cannot be handled as a NetworkPolicy: json: cannot unmarshal '
            "string into Go struct field spec.policyTypes of type array",
        ),
        (
            ingress_port(port=80.5),
            "cannot unmarshal number 80.5 into Go struct field spec.ingress[0].ports[0].port",
        ),
        (ingress_port(port=True), "cannot unmarshal bool into Go struct field spec.ingress[0].ports[0].port"),
        (ingress_port(port=80, endPort=2**31), "cannot unmarshal number 2147483648"),
        (
            policy({}, labels={"tier": 1}),
            "cannot unmarshal number 1 into Go struct field metadata.labels.tier",
        ),
        (policy([]), "cannot unmarshal array into Go struct field spec of type object"),
        (
            ingress_peer({"podSelecter": {}}),
            'strict decoding error: unknown field "spec.ingress[0].from[0].podSelecter"',
        ),
        (policy({"podSelector": {"matchLabel": {"a": "b"}}}), 'unknown field "spec.podSelector.matchLabel"'),
        ({**policy({}), "specs": {}}, 'strict decoding error: unknown field "specs"'),
    ],
)
def test_a_body_kube_apiserver_cannot_decode_is_a_decoding_problem(obj: dict[str, Any], message: str) -> None:
    problems = v.decode_problems(check(obj))
    assert problems
    assert message in v.decode_message("NetworkPolicy", "v1", problems[0])


def test_unknown_fields_are_no_decoding_problem_for_a_write_that_skips_validation() -> None:
    """A newer API server knows fields this one does not."""
    errors = check(ingress_peer({"podSelector": {}, "newPeerKind": {}}))
    assert v.decode_problems(errors) and not v.decode_problems(errors, unknown_fields=False)


# --- other kinds -----------------------------------------------------------------------------


def pod(ports: list[list[dict[str, Any]]], name: str = "a") -> dict[str, Any]:
    containers = [{"name": f"c{i}", "ports": p} for i, p in enumerate(ports)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"containers": containers},
    }


def service(ports: list[dict[str, Any]], name: str = "web", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"selector": {"app": "web"}, "ports": ports, **spec},
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team.a"}},
            [(v.INVALID, "metadata.name", 'Invalid value: "team.a": must not contain dots')],
        ),
        (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"a/b/c": "d"}}},
            [(v.INVALID, "metadata.labels", 'Invalid value: "a/b/c": a valid label key must consist of')],
        ),
        (
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "-a"}}},
            [(v.INVALID, "metadata.labels", 'Invalid value: "-a"')],
        ),
        (
            pod([[{"containerPort": 80, "name": "web_x"}]]),
            [(v.INVALID, "spec.containers[0].ports[0].name", "must contain only alpha-numeric characters")],
        ),
        (
            pod(
                [
                    [
                        {"containerPort": 80, "name": "dns"},
                        {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                    ]
                ]
            ),
            [(v.DUPLICATE, "spec.containers[0].ports[1].name", 'Duplicate value: "dns"')],
        ),
        (
            pod([[{"containerPort": 0}, {"containerPort": 70000, "protocol": "ICMP"}]]),
            [
                (v.REQUIRED, "spec.containers[0].ports[0].containerPort", "Required value"),
                (
                    v.INVALID,
                    "spec.containers[0].ports[1].containerPort",
                    f"Invalid value: 70000: {PORT_RANGE}",
                ),
                (
                    v.NOT_SUPPORTED,
                    "spec.containers[0].ports[1].protocol",
                    'Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"',
                ),
            ],
        ),
        (
            pod([], name="A"),
            [(v.INVALID, "metadata.name", 'Invalid value: "A": a lowercase RFC 1123 subdomain')],
        ),
        (
            service([{"port": 80}], name="1web"),
            [(v.INVALID, "metadata.name", 'Invalid value: "1web": a DNS-1035 label must consist of')],
        ),
        (
            service([{"port": 80}, {"port": 81}]),
            [
                (v.REQUIRED, "spec.ports[0].name", "Required value"),
                (v.REQUIRED, "spec.ports[1].name", "Required value"),
            ],
        ),
        (
            service([{"name": "a", "port": 80}, {"name": "a", "port": 80, "targetPort": "x--y"}]),
            [
                (v.DUPLICATE, "spec.ports[1].name", 'Duplicate value: "a"'),
                (v.INVALID, "spec.ports[1].targetPort", "must not contain consecutive hyphens"),
                (v.DUPLICATE, "spec.ports[1]", 'Duplicate value: {"port": 80, "protocol": "TCP"}'),
            ],
        ),
        (
            service([{"port": 80}], selector={"app": "web server"}, type="Internal"),
            [
                (v.NOT_SUPPORTED, "spec.type", '"Internal": supported values: "ClusterIP", "ExternalName"'),
                (v.INVALID, "spec.selector", 'Invalid value: "web server"'),
            ],
        ),
        (
            service([]),
            [(v.REQUIRED, "spec.ports", "Required value")],
        ),
    ],
)
def test_other_kinds_get_kube_apiserver_s_causes_for_names_labels_and_ports(
    obj: dict[str, Any], expected: list[tuple[str, str, str]]
) -> None:
    errors = check(obj)
    assert [(e.reason, e.field) for e in errors] == [(r, f) for r, f, _ in expected], causes(errors)
    for error, (_, _, body) in zip(errors, expected, strict=True):
        assert body in error.body()


def test_the_same_port_name_in_two_containers_is_admitted() -> None:
    assert (
        check(pod([[{"containerPort": 53, "name": "dns"}], [{"containerPort": 5353, "name": "dns"}]])) == []
    )


def test_a_labels_only_pod_replace_as_the_lab_allows_it_is_admitted() -> None:
    relabel = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a", "namespace": "x", "labels": {"a": "b"}},
    }
    assert check(relabel) == []


# --- agreement with the agent ----------------------------------------------------------------

KEYS = ("app", "example.com/tier", "bad key!", "-app", "a/b/c", "x" * 64)
VALUES = ("a", "", "b c", "v" * 64, "-a")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Equals")
PORTS = (None, 0, 1, 80, 65535, 65536, "http", "dns-tcp", "80", "-x", "web--x", "a" * 16)
CIDRS = ("10.0.0.0/8", "10.0.0.1/8", "10.1.0.0/16", "10.0.0.0/33", "::/0", "2001:db8::/32", "x", "10.0.0.0")

label_maps = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)
expressions = st.fixed_dictionaries(
    {"key": st.sampled_from(KEYS), "operator": st.sampled_from(OPERATORS)},
    optional={"values": st.lists(st.sampled_from(VALUES), max_size=2)},
)
selectors = st.fixed_dictionaries(
    {}, optional={"matchLabels": label_maps, "matchExpressions": st.lists(expressions, max_size=2)}
)
ip_blocks = st.fixed_dictionaries(
    {"cidr": st.sampled_from(CIDRS)}, optional={"except": st.lists(st.sampled_from(CIDRS), max_size=2)}
)
peers = st.fixed_dictionaries(
    {},
    optional={
        "podSelector": selectors,
        "namespaceSelector": selectors,
        "ipBlock": ip_blocks,
        "podSelecter": selectors,  # a field the API does not know
    },
)
ports = st.fixed_dictionaries(
    {},
    optional={
        "protocol": st.sampled_from(("TCP", "UDP", "SCTP", "ICMP", "tcp")),
        "port": st.sampled_from(PORTS),
        "endPort": st.sampled_from((80, 1, 65535, 65536)),
    },
)


def rules(peer_key: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {}, optional={peer_key: st.lists(peers, max_size=2), "ports": st.lists(ports, max_size=2)}
    )


specs = st.fixed_dictionaries(
    {},
    optional={
        "podSelector": selectors,
        "policyTypes": st.lists(st.sampled_from(("Ingress", "Egress", "Bogus")), max_size=3),
        "ingress": st.lists(rules("from"), max_size=2),
        "egress": st.lists(rules("to"), max_size=2),
    },
)


@settings(max_examples=400)
@given(specs)
def test_every_policy_the_server_admits_the_agent_reads_without_an_error(spec: dict[str, Any]) -> None:
    obj = defaulted(policy(spec))
    if v.validate("NetworkPolicy", True, obj):
        return
    assert parse_network_policy(obj).errors == ()


def test_a_legacy_cidr_the_server_admits_is_a_rule_the_agent_drops_fail_closed() -> None:
    """kube-apiserver reads '010.0.0.0/8' (leading zeros, decimal) and so does the lab's server;
    the agent refuses such a CIDR and drops the rule, keeping its pods isolated: content a real
    API server admits and the agent cannot enforce stays on the fail-closed path."""
    obj = defaulted(policy({"ingress": [{"from": [{"ipBlock": {"cidr": "010.0.0.0/8"}}]}]}))
    assert v.validate("NetworkPolicy", True, obj) == []
    parsed = parse_network_policy(obj)
    assert parsed.errors and parsed.ingress == () and parsed.isolates_ingress
