"""The kinds the agent watches and how to reach them with the official kubernetes client, and
the ApiClient from a kubeconfig or the in-cluster configuration.

ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2) is a CRD that a cluster may not have
installed: its KindSpec is `optional`, and a 404 on its list means "no such API" (the informer
then serves an empty cache and lists again now and then; controller.agent.informers). So are
Calico's projectcalico.org/v3 GlobalNetworkPolicy, NetworkPolicy and HostEndpoint (served by
Calico's API server, absent without Calico): the agent keys them by calico.KIND_KEYS
("NetworkPolicy.projectcalico.org", as Kubernetes has a NetworkPolicy kind too) and lists each
with CustomObjectsApi.list_cluster_custom_object (for the namespaced NetworkPolicy that is the
list across every namespace)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.compiler import calico, cnp
from controller.core.log import get_logger

log = get_logger("vethguard.sources")

# --------------------------------------------------------------------------------------------
# The kinds and how to reach them with the official client

ListFn = Callable[..., Any]  # kubernetes client list_* method (kwargs in, urllib3 response out)


@dataclass(frozen=True)
class KindSpec:
    kind: str
    api_version: str
    namespaced: bool
    list_fn_of: Callable[[Any], ListFn]  # ApiClient -> bound list method
    optional: bool = False  # an API that may not be installed (a CRD): 404 = no objects

    @property
    def object_kind(self) -> str:
        """The objects' `kind` ("NetworkPolicy" for the key "NetworkPolicy.projectcalico.org")."""
        return self.kind.partition(".")[0]


def _core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


def _networking(api_client: Any) -> Any:
    from kubernetes import client

    return client.NetworkingV1Api(api_client)


def _custom_objects(group: str, version: str, plural: str) -> Callable[[Any], ListFn]:
    """The list function of a custom resource, across every namespace when it is namespaced."""

    def list_fn_of(api_client: Any) -> ListFn:
        from kubernetes import client

        return functools.partial(
            client.CustomObjectsApi(api_client).list_cluster_custom_object, group, version, plural
        )

    return list_fn_of


CALICO_KINDS: tuple[KindSpec, ...] = tuple(
    KindSpec(
        calico.KIND_KEYS[kind],
        calico.API_VERSION,
        kind == calico.NAMESPACED_KIND,
        _custom_objects(calico.GROUP, calico.VERSION, plural),
        optional=True,
    )
    for kind, plural in calico.PLURALS.items()
)

KINDS: tuple[KindSpec, ...] = (
    KindSpec("Namespace", "v1", False, lambda a: _core(a).list_namespace),
    KindSpec("Pod", "v1", True, lambda a: _core(a).list_pod_for_all_namespaces),
    KindSpec(
        "NetworkPolicy",
        "networking.k8s.io/v1",
        True,
        lambda a: _networking(a).list_network_policy_for_all_namespaces,
    ),
    KindSpec("Node", "v1", False, lambda a: _core(a).list_node),
    # Services: the frontends whose flows are judged after DNAT (controller/compiler/frontends.py).
    KindSpec("Service", "v1", True, lambda a: _core(a).list_service_for_all_namespaces),
    KindSpec(
        cnp.KIND,
        cnp.API_VERSION,
        False,
        _custom_objects(cnp.GROUP, cnp.VERSION, cnp.PLURAL),
        optional=True,
    ),
    *CALICO_KINDS,
)


# Where deploy/ runs the agent (deploy/daemonset.yaml, deploy/rbac.yaml): what `--all-nodes`
# reads, what the lab's agent pods imitate and whose access `vethguard doctor` reviews
AGENT_NAMESPACE = "vethguard-system"
AGENT_CONTAINER = "agent"
AGENT_SERVICE_ACCOUNT = f"system:serviceaccount:{AGENT_NAMESPACE}:vethguard-agent"

# (API group, resource) of every kind above: what deploy/rbac.yaml's ClusterRole lets the agent
# list and watch, and nothing more (tests/unit/test_deploy.py; `vethguard doctor` reviews it)
AGENT_READS: tuple[tuple[str, str], ...] = (
    ("", "pods"),
    ("", "namespaces"),
    ("", "nodes"),
    ("", "services"),
    ("networking.k8s.io", "networkpolicies"),
    (cnp.GROUP, cnp.PLURAL),
    *((calico.GROUP, plural) for plural in calico.PLURALS.values()),
)


def load_api_client(kubeconfig: str | None = None) -> Any:
    """ApiClient from --kubeconfig, else $KUBECONFIG, else in-cluster config, else ~/.kube/config."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    from controller.core.errors import VethguardError

    cfg = client.Configuration()
    # The informer loop does its own retrying with backoff; urllib3's default Retry(3) would turn
    # one stall into four read timeouts in a row before the informer even notices.
    cfg.retries = False
    explicit = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if explicit:
            config.load_kube_config(config_file=explicit, client_configuration=cfg)
        else:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except ConfigException:
                default = os.path.expanduser("~/.kube/config")
                if not os.path.exists(default):
                    raise VethguardError(
                        "no Kubernetes configuration: pass --kubeconfig, set $KUBECONFIG, run in a pod "
                        f"with a service account, or create {default}"
                    ) from None
                config.load_kube_config(config_file=default, client_configuration=cfg)
    except (ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        where = explicit or "default locations"
        detail = " ".join(str(exc).split())  # YAML errors span lines: one line
        raise VethguardError(f"cannot load Kubernetes configuration ({where}): {detail}") from exc
    return client.ApiClient(cfg)
