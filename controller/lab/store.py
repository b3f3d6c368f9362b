"""In-memory Kubernetes object store with one global resourceVersion and a window of watch events.

Every write (create, replace, delete) takes the next value of a single cluster-wide counter, as
etcd's revision does for a real API server. The last `window` events are kept so that a watch can
resume from any resourceVersion inside the window; older ones get 410 Gone (reason Expired).
The objects and the counter are persisted to a JSON file after every write, so a restarted lab
daemon serves the same objects and versions (its event window starts empty, as a restarted
kube-apiserver's watch cache does).

Writes go through kube-apiserver's steps: decoding (400 BadRequest for a wrong JSON type or an
unknown NetworkPolicy or ClusterNetworkPolicy field), defaulting, validation (422 Invalid with the causes; see
controller.lab.validation), then the lab's admission hooks.

Resources are named by `Resource.key`: the plural, except for Calico's projectcalico.org/v3 kinds
(served as if Calico's API server were installed), which are plural.group
(`networkpolicies.projectcalico.org`, as kubectl spells a resource it must tell apart from
Kubernetes' NetworkPolicies). `validate=False` (write_unvalidated)
skips validation, as an API server of another version could have admitted the object.
"""

from __future__ import annotations

import builtins
import copy
import datetime
import json
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.compiler import calico, cnp
from controller.lab import validation

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str  # "" for the core group
    version: str
    namespaced: bool
    qualified: bool = False  # named plural.group: another group serves the same plural and kind
    short_names: tuple[str, ...] = ()  # kubectl's (discovery): `kubectl get netpol`

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """The store's name for the resource (Store.list(key), RESOURCES[key], WatchEvent.resource)."""
        return f"{self.plural}.{self.group}" if self.qualified else self.plural

    @property
    def qualified_kind(self) -> str:
        """The kind, group-qualified where it is ambiguous (validation's and manifests' name)."""
        return f"{self.kind}.{self.group}" if self.qualified else self.kind


# Calico's own short names, except its NetworkPolicy's "cnp" (ClusterNetworkPolicy's here)
CALICO_SHORT_NAMES = {"GlobalNetworkPolicy": ("gnp",), "HostEndpoint": ("hep", "heps")}

RESOURCES: dict[str, Resource] = {
    r.key: r
    for r in (
        Resource("namespaces", "Namespace", "", "v1", namespaced=False, short_names=("ns",)),
        Resource("nodes", "Node", "", "v1", namespaced=False, short_names=("no",)),
        Resource("pods", "Pod", "", "v1", namespaced=True, short_names=("po",)),
        Resource(
            "networkpolicies",
            "NetworkPolicy",
            "networking.k8s.io",
            "v1",
            namespaced=True,
            short_names=("netpol",),
        ),
        Resource("externalhosts", "ExternalHost", "lab.vethguard.dev", "v1alpha1", namespaced=False),
        Resource("services", "Service", "", "v1", namespaced=True, short_names=("svc",)),
        Resource("endpointslices", "EndpointSlice", "discovery.k8s.io", "v1", namespaced=True),
        Resource(cnp.PLURAL, cnp.KIND, cnp.GROUP, cnp.VERSION, namespaced=False, short_names=("cnp",)),
        *(
            Resource(
                plural,
                kind,
                calico.GROUP,
                calico.VERSION,
                kind == calico.NAMESPACED_KIND,
                True,
                short_names=CALICO_SHORT_NAMES.get(kind, ()),
            )
            for kind, plural in calico.PLURALS.items()
        ),
    )
}
BY_PATH: dict[tuple[str, str], Resource] = {(r.api_version, r.plural): r for r in RESOURCES.values()}
# A kind's resource; where two groups have the kind (NetworkPolicy), the unqualified one.
BY_KIND: dict[str, Resource] = {r.kind: r for r in reversed(RESOURCES.values())}


def resources_of_kind(kind: Any) -> list[Resource]:
    return [r for r in RESOURCES.values() if r.kind == kind]


def resource_of(kind: Any, api_version: Any = None) -> Resource | None:
    """The resource of a kind: the one of `api_version` when two groups have the kind
    (NetworkPolicy), else BY_KIND's (None for an unknown kind)."""
    for r in resources_of_kind(kind):
        if r.api_version == api_version:
            return r
    return BY_KIND.get(kind) if isinstance(kind, str) else None


class ApiError(Exception):
    """A failure reported to API clients as a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        return status_object(self.code, self.reason, self.message, self.details)


def status_object(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    status: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        status["details"] = details
    status["code"] = code
    return status


def invalid(resource: Resource, name: str, errors: validation.Errors) -> ApiError:
    """422 Invalid, worded and detailed as kube-apiserver does."""
    return ApiError(
        422,
        "Invalid",
        validation.invalid_message(resource.kind, resource.group, name, errors),
        validation.invalid_details(resource.kind, resource.group, name, errors),
    )


def not_found(resource: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource.key} "{name}" not found')


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    resource: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None


class Expired(Exception):
    """The requested resourceVersion is older than the retained event window."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Admission(Protocol):
    """Hooks the lab daemon uses to build pod namespaces before a Pod is written, and so on."""

    def admit(self, op: str, resource: Resource, obj: Obj, old: Obj | None) -> Obj: ...

    def committed(self, op: str, resource: Resource, obj: Obj, old: Obj | None) -> None: ...


def now_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def object_key(resource: Resource, obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(resource, "", [validation.required("metadata.name", validation.NAME_REQUIRED)])
    namespace = ""
    if resource.namespaced:
        namespace = meta.get("namespace") or "default"
        if not isinstance(namespace, str):
            raise ApiError(422, "Invalid", f"{resource.kind} {name}: metadata.namespace must be a string")
    return namespace, name


def key_name(key: Key) -> str:
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def _spec_of(obj: Obj) -> Any:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


# --- defaulting, as kube-apiserver does it for the fields agents read --------------------------


def _default_policy(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    if spec.get("podSelector") is None:
        spec["podSelector"] = {}
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            if not isinstance(rule, dict):
                continue
            for port in rule.get("ports") or []:
                if isinstance(port, dict) and port.get("protocol") is None:
                    port["protocol"] = "TCP"
    if not spec.get("policyTypes"):
        types = ["Ingress"]
        if spec.get("egress"):
            types.append("Egress")
        spec["policyTypes"] = types


def _default_pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    containers = spec.setdefault("containers", [])
    for index, container in enumerate(containers or []):
        if not isinstance(container, dict):
            continue
        container.setdefault("name", f"c{index}")
        for port in container.get("ports") or []:
            if isinstance(port, dict) and port.get("protocol") is None:
                port["protocol"] = "TCP"


def _default_namespace(obj: Obj) -> None:
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    if meta.get("name"):
        labels["kubernetes.io/metadata.name"] = meta["name"]
    meta["labels"] = labels
    obj.setdefault("spec", {"finalizers": ["kubernetes"]})
    obj["status"] = {"phase": "Active"}


def _default_service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            if port.get("protocol") is None:
                port["protocol"] = "TCP"
            if port.get("targetPort") in (None, 0, ""):
                port["targetPort"] = port.get("port")


DEFAULTERS: dict[str, Callable[[Obj], None]] = {
    "services": _default_service,
    "networkpolicies": _default_policy,
    "pods": _default_pod,
    "namespaces": _default_namespace,
}


def _validate(resource: Resource, obj: Obj, old: Obj | None) -> None:
    errors = validation.validate(resource.qualified_kind, resource.namespaced, obj, old)
    if errors:
        raise invalid(resource, str(obj["metadata"].get("name") or ""), errors)


class Store:
    """Objects by resource and (namespace, name); one resourceVersion counter for all of them."""

    def __init__(self, path: Path | None = None, window: int = 5000) -> None:
        self._path = path
        self._window = window
        self._objects: dict[str, dict[Key, Obj]] = {plural: {} for plural in RESOURCES}
        self._events: deque[WatchEvent] = deque(maxlen=window)
        self._rv = 0
        self._oldest_watchable = 0  # a watch from rv >= this value can resume
        self._last_change: dict[str, int] = {}  # resource key -> resourceVersion of its last write
        self._cond = threading.Condition()
        self._write_lock = threading.RLock()
        self.admission: Admission | None = None
        if path is not None and path.exists():
            self._load(path)

    # --- reads -----------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def list(self, plural: str, namespace: str | None = None) -> tuple[list[Obj], int]:
        with self._cond:
            items = [
                copy.deepcopy(obj)
                for (ns, _name), obj in sorted(self._objects[plural].items())
                if namespace is None or ns == namespace
            ]
            return items, self._rv

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        with self._cond:
            obj = self._objects[plural].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def events_since(self, rv: int) -> tuple[builtins.list[WatchEvent], int]:
        """Events with resourceVersion > rv, and the current resourceVersion; Expired if gone."""
        with self._cond:
            if rv < self._oldest_watchable:
                raise Expired(rv, self._oldest_watchable)
            return [e for e in self._events if e.rv > rv], self._rv

    def realized_generation(self, seen: Mapping[str, str]) -> int | None:
        """The resourceVersion a reader has caught up with, from the last resourceVersion it has
        seen per resource (resource key -> version, as this store issued it; an agent's
        /status `realized`). A resource counts as current when nothing of it was written after
        the version seen: without BOOKMARKs a resource nobody writes keeps its old version, and
        the reader has still seen all of it. None: nothing seen, or a version not this store's.
        (The store may order its own versions; readers compare them only for equality.)"""
        with self._cond:
            caught_up = []
            for key, version in seen.items():
                if not version.isdigit():
                    return None
                rv = int(version)
                caught_up.append(self._rv if rv >= self._last_change.get(key, 0) else rv)
            return min(caught_up) if caught_up else None

    def wait_for_change(self, rv: int, timeout: float) -> int:
        """Block until the resourceVersion passes rv (or timeout); return the current one."""
        with self._cond:
            self._cond.wait_for(lambda: self._rv > rv, timeout=timeout)
            return self._rv

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- writes ----------------------------------------------------------------------------

    def create(self, plural: str, obj: Obj, namespace: str | None = None, *, validate: bool = True) -> Obj:
        """Store a new object. validate=False skips field validation (not decoding): see
        write_unvalidated."""
        resource = RESOURCES[plural]
        obj = self._normalize(resource, obj, namespace, validate)
        if validate:
            _validate(resource, obj, None)
        key = object_key(resource, obj)
        with self._write_lock:
            if self.get(plural, *key) is not None:
                raise ApiError(409, "AlreadyExists", f'{resource.key} "{key[1]}" already exists')
            self._check_namespace(resource, key)
            if self.admission is not None:
                obj = self.admission.admit("create", resource, obj, None)
            meta = obj["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_timestamp()
            meta["generation"] = 1
            stored = self._commit(resource, key, "ADDED", obj, None)
            if self.admission is not None:
                self.admission.committed("create", resource, stored, None)
            return stored

    def replace(
        self,
        plural: str,
        obj: Obj,
        namespace: str | None = None,
        name: str | None = None,
        *,
        validate: bool = True,
    ) -> Obj:
        resource = RESOURCES[plural]
        obj = self._normalize(resource, obj, namespace, validate)
        key = object_key(resource, obj)
        if name is not None and name != key[1]:
            raise ApiError(
                400, "BadRequest", f"the name of the object ({key[1]}) does not match the URL ({name})"
            )
        with self._write_lock:
            old = self.get(plural, *key)
            if old is None:
                raise not_found(resource, key[1])
            wanted_rv = obj["metadata"].get("resourceVersion")
            if wanted_rv and str(wanted_rv) != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {plural} "{key[1]}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                )
            if validate:
                _validate(resource, obj, old)
            if self.admission is not None:
                obj = self.admission.admit("replace", resource, obj, old)
            meta = obj["metadata"]
            for field in ("uid", "creationTimestamp"):
                meta[field] = old["metadata"][field]
            generation = int(old["metadata"].get("generation", 1))
            meta["generation"] = generation + 1 if _spec_of(obj) != _spec_of(old) else generation
            if resource.key != "namespaces" and "status" not in obj and "status" in old:
                obj["status"] = old["status"]
            stored = self._commit(resource, key, "MODIFIED", obj, old)
            if self.admission is not None:
                self.admission.committed("replace", resource, stored, old)
            return stored

    def write_unvalidated(self, obj: Any) -> Obj:
        """Create or replace `obj` (found by its kind) without field validation, as an API
        server of another version could have admitted it; undecodable bodies are still refused
        (400). The lab serves this as POST /lab/v1/unvalidated, so that tests can show agents
        objects that this server answers 422 to."""
        kind = obj.get("kind") if isinstance(obj, dict) else None
        resource = resource_of(kind, obj.get("apiVersion")) if isinstance(obj, dict) else None
        if resource is None:
            raise ApiError(400, "BadRequest", f"unknown kind {kind!r}")
        try:
            return self.replace(resource.key, obj, validate=False)
        except ApiError as err:
            if err.code != 404:
                raise
        return self.create(resource.key, obj, validate=False)

    def delete(self, plural: str, namespace: str, name: str) -> Obj:
        resource = RESOURCES[plural]
        key = (namespace if resource.namespaced else "", name)
        with self._write_lock:
            old = self.get(plural, *key)
            if old is None:
                raise not_found(resource, name)
            if plural == "namespaces":
                self._delete_namespace_contents(name)
            if self.admission is not None:
                self.admission.admit("delete", resource, old, old)
            stored = self._commit(resource, key, "DELETED", old, old)
            if self.admission is not None:
                self.admission.committed("delete", resource, stored, old)
            return stored

    def _delete_namespace_contents(self, namespace: str) -> None:
        for plural, resource in RESOURCES.items():
            if not resource.namespaced:
                continue
            for ns, name in [k for k in list(self._objects[plural]) if k[0] == namespace]:
                self.delete(plural, ns, name)

    def _check_namespace(self, resource: Resource, key: Key) -> None:
        if resource.namespaced and self.get("namespaces", "", key[0]) is None:
            raise ApiError(404, "NotFound", f'namespaces "{key[0]}" not found')

    def _normalize(self, resource: Resource, obj: Obj, namespace: str | None, validate: bool) -> Obj:
        """Decoded (400 when impossible) and defaulted, as kube-apiserver does before validation.
        Unknown fields count as undecodable only when validating: a newer API server knows them."""
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", f"{resource.kind}: the body must be a JSON object")
        obj = copy.deepcopy(obj)
        kind = obj.get("kind")
        if kind not in (None, resource.kind):
            raise ApiError(400, "BadRequest", f"kind {kind} does not match the resource {resource.key}")
        obj["kind"] = resource.kind
        obj["apiVersion"] = resource.api_version
        if obj.get("metadata") is None:
            obj["metadata"] = {}
        problems = validation.validate(resource.qualified_kind, resource.namespaced, obj)
        decoding = validation.decode_problems(problems, unknown_fields=validate)
        if decoding:
            message = validation.decode_message(resource.kind, resource.version, decoding[0])
            raise ApiError(400, "BadRequest", message)
        meta = obj["metadata"]
        if resource.namespaced:
            body_ns = meta.get("namespace")
            if namespace is not None and body_ns not in (None, namespace):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = body_ns or namespace or "default"
        else:
            meta.pop("namespace", None)
        defaulter = DEFAULTERS.get(resource.key)
        if defaulter is not None:
            defaulter(obj)
        return obj

    def _commit(self, resource: Resource, key: Key, event_type: str, obj: Obj, old: Obj | None) -> Obj:
        with self._cond:
            self._rv += 1
            self._last_change[resource.key] = self._rv
            stored = copy.deepcopy(obj)
            stored["metadata"]["resourceVersion"] = str(self._rv)
            if event_type == "DELETED":
                del self._objects[resource.key][key]
            else:
                self._objects[resource.key][key] = stored
            if len(self._events) == self._window:
                self._oldest_watchable = self._events[0].rv
            self._events.append(WatchEvent(self._rv, resource.key, event_type, stored, old))
            self._save()
            self._cond.notify_all()
            return copy.deepcopy(stored)

    # --- persistence -----------------------------------------------------------------------

    def _save(self) -> None:
        if self._path is None:
            return
        data = {
            "resourceVersion": self._rv,
            "objects": {plural: list(objs.values()) for plural, objs in self._objects.items()},
        }
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._path)

    def _load(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self._rv = int(data["resourceVersion"])
        self._oldest_watchable = self._rv  # the event window starts empty after a restart
        # what was written before is unknown: any kind counts as changed at the loaded version
        self._last_change = dict.fromkeys(RESOURCES, self._rv)
        for plural, items in data.get("objects", {}).items():
            resource = RESOURCES.get(plural)
            if resource is None:
                continue
            for obj in items:
                self._objects[plural][object_key(resource, obj)] = obj
