"""Calico's projectcalico.org/v3 objects as API JSON and as a manifest, for the tests of the lab's
API server, the agent's watch, the debug views and the lab (shared; tests never import each other)."""

from __future__ import annotations

from typing import Any

GROUP, VERSION = "projectcalico.org", "v3"
API_VERSION = f"{GROUP}/{VERSION}"
GNP, NETPOL, HEP = "globalnetworkpolicies", "networkpolicies", "hostendpoints"
# The lab store's names for them (controller.lab.store.Resource.key)
GNP_KEY, NETPOL_KEY, HEP_KEY = (f"{p}.{GROUP}" for p in (GNP, NETPOL, HEP))


def gnp(name: str = "deny-nodeports", order: float | None = 1100, **spec: Any) -> dict[str, Any]:
    """The guide's NodePort policy: deny TCP and UDP 30000:32767 on the public host endpoints."""
    body: dict[str, Any] = {
        "selector": "ibm.role in { 'worker_public', 'master_public' }",
        "applyOnForward": True,
        "preDNAT": True,
        "types": ["Ingress"],
        "ingress": [
            {"action": "Deny", "protocol": "TCP", "destination": {"ports": ["30000:32767"]}},
            {"action": "Deny", "protocol": "UDP", "destination": {"ports": ["30000:32767"]}},
        ],
    }
    if order is not None:
        body["order"] = order
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name},
        "spec": body,
    }


def calico_netpol(namespace: str = "x", name: str = "allow-web", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order": 100,
        "selector": "app == 'web'",
        "ingress": [
            {
                "action": "Allow",
                "protocol": "TCP",
                "source": {"selector": "role == 'client'"},
                "destination": {"ports": [80, "8080:8090"]},
            }
        ],
    }
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": body,
    }


def hep(name: str = "node-1-public", node: str = "node-1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"node": node, "interfaceName": "eth0", "expectedIPs": ["10.0.0.1"]}
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "HostEndpoint",
        "metadata": {"name": name, "labels": {"ibm.role": "worker_public"}},
        "spec": body,
    }


MANIFEST = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-nodeports}
spec:
  order: 1100
  selector: ibm.role in { 'worker_public', 'master_public' }
  applyOnForward: true
  preDNAT: true
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: TCP, destination: {ports: ['30000:32767']}}
  - {action: Deny, protocol: UDP, destination: {ports: ['30000:32767']}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: x}
spec:
  order: 100
  selector: app == 'web'
  ingress:
  - {action: Allow, protocol: TCP, source: {selector: role == 'client'}, destination: {ports: [80]}}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  name: node-1-public
  labels: {ibm.role: worker_public}
spec:
  node: node-1
  expectedIPs: [192.0.2.10]  # no interface of the lab has it: placed on nothing, blocks nothing
"""
