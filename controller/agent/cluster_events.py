"""What the informers deliver: raw API JSON shapes, events, per-kind snapshots of the cache
(objects, last resourceVersion seen, content digest: controller.core.object_versions)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from controller.compiler.calico import GLOBAL_KIND, HEP_KIND, KIND_KEYS, NAMESPACED_KIND, CalicoObjects
from controller.core.log import get_logger

log = get_logger("vethguard.sources")

# --------------------------------------------------------------------------------------------
# Raw API JSON shapes (only the fields this module reads)


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    resourceVersion: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]


class KubeObject(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]
    status: dict[str, Any]


class ListMeta(TypedDict, total=False):
    resourceVersion: str
    # `continue` is a keyword: read it with .get("continue")


class KubeList(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ListMeta
    items: list[KubeObject]


class WatchEventJSON(TypedDict):
    type: str  # ADDED MODIFIED DELETED BOOKMARK ERROR
    object: dict[str, Any]


EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "SYNCED"]


@dataclass(frozen=True)
class Event:
    """One change in an informer cache.

    SYNCED is emitted after every (re)list has replaced the cache (after the diff events).
    """

    kind: str  # "Namespace", "Pod", "NetworkPolicy", "Node", "Service", "ClusterNetworkPolicy",
    # and Calico's by calico.KIND_KEYS: "GlobalNetworkPolicy.projectcalico.org", ...
    type: EventType
    key: str  # "ns/name" for namespaced kinds, "name" otherwise; "" for BOOKMARK/SYNCED
    obj: KubeObject | None
    resource_version: str


@dataclass(frozen=True)
class KindSnapshot:
    objects: tuple[KubeObject, ...]
    resource_version: str
    content_version: int  # bumps on every cache content change (not on bookmarks)
    synced: bool
    absent: bool = False  # an optional API the server does not serve (404): no objects
    digest: int = 0  # object_versions.kind_digest of `objects`, kept up to date per event


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of every cache (each kind read atomically)."""

    kinds: Mapping[str, KindSnapshot]

    @property
    def namespaces(self) -> tuple[KubeObject, ...]:
        return self.kinds["Namespace"].objects

    @property
    def pods(self) -> tuple[KubeObject, ...]:
        return self.kinds["Pod"].objects

    @property
    def policies(self) -> tuple[KubeObject, ...]:
        return self.kinds["NetworkPolicy"].objects

    @property
    def nodes(self) -> tuple[KubeObject, ...]:
        return self.kinds["Node"].objects

    @property
    def services(self) -> tuple[KubeObject, ...]:
        kind = self.kinds.get("Service")
        return kind.objects if kind is not None else ()

    @property
    def cluster_policies(self) -> tuple[KubeObject, ...]:
        return self._optional("ClusterNetworkPolicy")

    @property
    def calico(self) -> CalicoObjects:
        """Calico's projectcalico.org/v3 objects (none where Calico's API is not served)."""
        return CalicoObjects(
            global_policies=self._optional(KIND_KEYS[GLOBAL_KIND]),
            namespaced_policies=self._optional(KIND_KEYS[NAMESPACED_KIND]),
            host_endpoints=self._optional(KIND_KEYS[HEP_KIND]),
        )

    def _optional(self, key: str) -> tuple[KubeObject, ...]:
        kind = self.kinds.get(key)
        return kind.objects if kind is not None else ()

    @property
    def content_versions(self) -> tuple[int, ...]:
        return tuple(self.kinds[k].content_version for k in sorted(self.kinds))


def has_name(obj: Any) -> bool:
    """Whether a raw object can be keyed at all (everything else is left to the model)."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return isinstance(meta, dict) and isinstance(meta.get("name"), str) and bool(meta["name"])
