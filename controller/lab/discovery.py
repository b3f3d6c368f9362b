"""What the lab API server answers about itself: /version, discovery (/api, /apis and each group
version's resource list, with kubectl's short names), and the OpenAPI v3 documents kubectl reads
before it writes (pure: documents from controller.lab.store's RESOURCES).

kubectl 1.32 `apply`/`create`/`replace` validate a manifest first: when the group version's OpenAPI
v3 document shows that the resource's PATCH accepts the `fieldValidation` query parameter, kubectl
leaves validation to the server (the lab's validation.py, as kube-apiserver would) and downloads
no schema. So each document lists, per resource, the item path with a PATCH operation tagged with
its group/version/kind and that parameter; it carries no schemas (`kubectl explain` has nothing
to show). Without these documents kubectl refuses with "failed to download openapi".
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from controller.lab.store import RESOURCES, Resource

KUBE_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-vethguard-lab",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-01-01T00:00:00Z",
    "goVersion": "go1.22",
    "compiler": "gc",
    "platform": "linux/amd64",
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
OPENAPI_ROOT = "/openapi/v3"
IN_ALL = {"pods", "services"}  # `kubectl get all`


def groups() -> dict[str, list[Resource]]:
    """group version ("v1", "networking.k8s.io/v1") -> its resources."""
    out: dict[str, list[Resource]] = {}
    for resource in RESOURCES.values():
        out.setdefault(resource.api_version, []).append(resource)
    return out


def _prefix(group_version: str) -> str:
    return "api/v1" if group_version == "v1" else f"apis/{group_version}"


def _resource_entry(r: Resource) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": r.plural,
        "singularName": r.kind.lower(),
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": VERBS,
    }
    if r.short_names:
        entry["shortNames"] = list(r.short_names)
    if r.plural in IN_ALL and not r.group:
        entry["categories"] = ["all"]
    return entry


def _group_list(gvs: dict[str, list[Resource]]) -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": gv.split("/")[0],
                "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
            }
            for gv in gvs
            if "/" in gv
        ],
    }


def openapi_document(group_version: str, resources: list[Resource]) -> dict[str, Any]:
    """One group version's OpenAPI v3 document: each resource's item path with a PATCH that takes
    `fieldValidation` (module docstring)."""
    group, _, version = group_version.rpartition("/")
    paths = {}
    for r in resources:
        scope = "namespaces/{namespace}/" if r.namespaced else ""
        paths[f"/{_prefix(group_version)}/{scope}{r.plural}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{r.kind}",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind},
                "parameters": [
                    {
                        "name": "fieldValidation",
                        "in": "query",
                        "schema": {"type": "string", "uniqueItems": True},
                    }
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {"openapi": "3.0.0", "info": {"title": "vethguard lab", "version": group_version}, "paths": paths}


def _openapi_root(gvs: dict[str, list[Resource]]) -> dict[str, Any]:
    paths = {}
    for gv, resources in gvs.items():
        digest = hashlib.sha256(json.dumps(openapi_document(gv, resources)).encode()).hexdigest()[:16]
        paths[_prefix(gv)] = {"serverRelativeURL": f"{OPENAPI_ROOT}/{_prefix(gv)}?hash={digest}"}
    return {"paths": paths}


def discovery(path: str) -> Any | None:
    """The document a GET of `path` answers with, or None when the path is not one of these."""
    path = "/" + path.strip("/")
    gvs = groups()
    if path == "/version":
        return KUBE_VERSION
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.244.0.1:6443"}],
        }
    if path == "/apis":
        return _group_list(gvs)
    if path == OPENAPI_ROOT:
        return _openapi_root(gvs)
    for gv, resources in gvs.items():
        if path == f"/{_prefix(gv)}":
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": gv,
                "resources": [_resource_entry(r) for r in resources],
            }
        if path == f"{OPENAPI_ROOT}/{_prefix(gv)}":
            return openapi_document(gv, resources)
    return None
