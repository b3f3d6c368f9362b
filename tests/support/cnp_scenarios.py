"""The ClusterNetworkPolicy conformance scenarios of ../shared/conformance/cnp as data, replayed
against any decision function (the reference evaluator, or the compiled maps + lookup model)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

SCENARIOS = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "cnp" / "cnp-public.yaml"
NODE = "node-1"

# (namespaces, pods, NetworkPolicies, ClusterNetworkPolicies) as raw objects -> a function
# answering (from "ns/pod", to "ns/pod", port, protocol) -> connected
Decider = Callable[
    [Iterable[dict[str, Any]], Iterable[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]],
    Callable[[str, str, int, str], bool],
]


def scenarios() -> list[dict[str, Any]]:
    """Every scenario ([] when the shared data is not present)."""
    if not SCENARIOS.is_file():
        return []
    return list(yaml.safe_load(SCENARIOS.read_text()))


def pod_object(i: int, spec: dict[str, Any]) -> dict[str, Any]:
    ports = [
        {
            "containerPort": p["port"],
            "protocol": p["protocol"],
            **({"name": p["name"]} if "name" in p else {}),
        }
        for p in spec.get("ports", [])
    ]
    address = str(ipaddress.IPv4Address("10.244.1.10") + i)
    return {
        "metadata": {
            "namespace": spec["namespace"],
            "name": spec["name"],
            "labels": dict(spec.get("labels") or {}),
        },
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": ports}]},
        "status": {"phase": "Running", "podIPs": [{"ip": address}]},
    }


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata", obj)
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def replay(scenario: dict[str, Any], decide: Decider) -> list[str]:
    """Every check whose answer differs from upstream's, as text."""
    model = scenario["model"]
    namespaces = {
        n["name"]: {"metadata": {"name": n["name"], "labels": dict(n.get("labels") or {})}}
        for n in model["namespaces"]
    }
    pods = {f"{p['namespace']}/{p['name']}": pod_object(i, p) for i, p in enumerate(model["pods"])}
    objects: dict[tuple[str, str, str], dict[str, Any]] = {}
    wrong = []
    for n, step in enumerate(scenario["steps"]):
        for gone in step.get("delete") or []:
            objects.pop(_key(gone), None)
        for obj in step.get("apply") or []:
            objects[_key(obj)] = obj
        if "label" in step:
            target = step["label"]
            meta = (
                namespaces[target["name"]]
                if target["kind"] == "Namespace"
                else pods[f"{target['namespace']}/{target['name']}"]
            )["metadata"]
            meta["labels"] = dict(target["labels"])
        connected = decide(
            namespaces.values(),
            pods.values(),
            [o for o in objects.values() if o["kind"] == "NetworkPolicy"],
            [o for o in objects.values() if o["kind"] == "ClusterNetworkPolicy"],
        )
        for check in step.get("checks") or []:
            got = connected(check["from"], check["to"], check["port"], check["protocol"])
            if got != check["connected"]:
                wrong.append(f"step {n}: {check} -> {got}")
    return wrong
