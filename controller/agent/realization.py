"""What the agent reports as realized: the state of its caches that its maps reflect.

After a pass whose maps reflect a snapshot of the caches (Datapath.sync succeeded, or nothing
changed since the last one that did), the agent publishes that snapshot's
  realized          kind -> {resourceVersion, objects, digest}: the last resourceVersion its
                    informer had seen (opaque, as the server sent it), how many objects, and
                    their content digest (controller.core.object_versions)
  realized_objects  for the policy kinds (not Namespaces, Pods, Nodes, Services: a cluster has
                    many of those), object key -> resourceVersion
Readers compare only for equality: a policy is realized on a node when that node's
realized_objects hold the policy's current resourceVersion; an agent has caught up with a list
when the digests of the listed kinds are equal; the lab (which issued its own resourceVersions)
turns `realized` into the lab contract's realized_generation. None of it depends on BOOKMARKs:
a kind nobody writes keeps its version, and still counts as caught up (docs/INTERNALS.md
"Realization").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from controller.agent.cluster_events import Snapshot
from controller.agent.kube_api import KINDS
from controller.core.object_versions import EMPTY_DIGEST, digest_text, object_key, resource_version_of

# The kinds a cluster has many of: realized only as a whole (resourceVersion and digest)
BULK_KINDS = frozenset({"Namespace", "Pod", "Node", "Service"})
NAMESPACED = {spec.kind: spec.namespaced for spec in KINDS}


class RealizedKind(TypedDict):
    resourceVersion: str
    objects: int
    digest: str


def realized_kinds(snap: Snapshot | None) -> dict[str, RealizedKind]:
    """kind -> what of it the snapshot holds; kinds the server does not serve are left out."""
    if snap is None:
        return {}
    return {
        kind: {
            "resourceVersion": k.resource_version,
            "objects": len(k.objects),
            "digest": digest_text(k.digest),
        }
        for kind, k in sorted(snap.kinds.items())
        if not k.absent
    }


def realized_objects(snap: Snapshot | None) -> dict[str, dict[str, str]]:
    """Policy kind -> object key -> resourceVersion, of the snapshot."""
    if snap is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    for kind, k in sorted(snap.kinds.items()):
        if k.absent or kind in BULK_KINDS:
            continue
        namespaced = NAMESPACED.get(kind, True)
        out[kind] = {object_key(o, namespaced): resource_version_of(o) for o in k.objects}
    return out


def differing_kinds(listed: Mapping[str, str], status: Mapping[str, Any]) -> list[str]:
    """The kinds (of `listed`: kind -> digest text of a list) whose digest differs from what an
    agent's /status says it realized; a kind the agent does not report counts as empty."""
    realized = status.get("realized") or {}
    empty = digest_text(EMPTY_DIGEST)
    return sorted(
        kind
        for kind, digest in listed.items()
        if ((realized.get(kind) or {}).get("digest") or empty) != digest
    )


def kind_of(obj: Mapping[str, Any]) -> str:
    """The agent's kind name (kube_api.KINDS) of a raw object: its kind, group-qualified where
    the agent qualifies it (Calico's "NetworkPolicy.projectcalico.org")."""
    kind = str(obj.get("kind") or "")
    api_version = str(obj.get("apiVersion") or "")
    qualified = f"{kind}.{api_version.partition('/')[0]}" if "/" in api_version else kind
    return qualified if qualified in NAMESPACED else kind


def realized_version(status: Mapping[str, Any] | None, obj: Mapping[str, Any]) -> str | None:
    """The resourceVersion of `obj` (a policy kind's object) in the state an agent's /status
    says its maps realize; None when that state does not hold the object."""
    kind = kind_of(obj)
    objects = ((status or {}).get("realized_objects") or {}).get(kind) or {}
    version = objects.get(object_key(obj, NAMESPACED.get(kind, True)))
    return str(version) if version is not None else None
