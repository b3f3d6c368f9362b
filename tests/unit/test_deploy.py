"""deploy/: every manifest validates against the Kubernetes schemas (kubernetes-validate, offline,
strict: unknown fields fail), the RBAC is list/watch of exactly what the agent reads, only the
bpffs-mount init container is privileged (the API demands it for Bidirectional propagation),
and the DaemonSet agrees with the agent (port, probes, pin root, capabilities preflight needs).
deploy/uninstall.yaml (applied after the kustomization is deleted, not part of it) passes the
same schema checks and agrees with the agent's directories."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller.agent import loop as agent
from controller.agent import preflight
from controller.agent.kube_api import AGENT_READS, KINDS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Oldest and newest Kubernetes minor we claim: appArmorProfile (GA in 1.30) sets the floor.
K8S_VERSIONS = ("1.30.0", "1.35.0")
NAMESPACE = "vethguard-system"


UNINSTALL = DEPLOY / "uninstall.yaml"


def manifest_files() -> list[Path]:
    """The kustomization's manifests (uninstall.yaml is applied on its own, after them)."""
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name not in ("kustomization.yaml", UNINSTALL.name))


def documents() -> list[dict[str, Any]]:
    return [d for p in manifest_files() for d in yaml.safe_load_all(p.read_text()) if d]


def uninstall_documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(UNINSTALL.read_text()) if d]


def one(kind: str) -> dict[str, Any]:
    [doc] = [d for d in documents() if d["kind"] == kind]
    return doc


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("DaemonSet")["spec"]["template"]["spec"]
    return spec


def agent_container() -> dict[str, Any]:
    [c] = [c for c in pod_spec()["containers"] if c["name"] == "agent"]
    return c


def all_containers() -> list[dict[str, Any]]:
    spec = pod_spec()
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "doc", documents() + uninstall_documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_every_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_validation_catches_a_misspelled_field() -> None:
    ds = copy.deepcopy(one("DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[0], strict=True)


def test_the_kustomization_lists_every_manifest_and_only_those() -> None:
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kust["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == [p.name for p in manifest_files()]
    assert kust["namespace"] == NAMESPACE
    image = agent_container()["image"]
    assert [(i["name"], i["newTag"]) for i in kust["images"]] == [tuple(image.split(":"))]


def test_every_object_and_the_pod_template_carry_the_app_kubernetes_io_labels() -> None:
    ds = one("DaemonSet")
    template_labels = ds["spec"]["template"]["metadata"]["labels"]
    for labels in [d["metadata"]["labels"] for d in documents()] + [template_labels]:
        assert labels["app.kubernetes.io/name"] == "vethguard"
        assert labels["app.kubernetes.io/part-of"] == "vethguard"
        assert "app.kubernetes.io/version" in labels
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def test_namespaced_objects_live_in_the_agent_namespace() -> None:
    for doc in documents():
        if doc["kind"] in ("ServiceAccount", "DaemonSet"):
            assert doc["metadata"]["namespace"] == NAMESPACE
    assert one("Namespace")["metadata"]["name"] == NAMESPACE


def test_the_cluster_role_only_lists_and_watches_what_the_agent_reads() -> None:
    kinds = [d["kind"] for d in documents()]
    assert kinds.count("ClusterRole") == 1 and "Role" not in kinds and "RoleBinding" not in kinds
    granted = set()
    for rule in one("ClusterRole")["rules"]:
        assert sorted(rule["verbs"]) == ["list", "watch"]
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames, no nonResourceURLs
        granted |= {(g, r) for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == set(AGENT_READS)


def test_the_role_covers_the_api_group_of_every_kind_the_agent_watches() -> None:
    groups = {spec.api_version.rpartition("/")[0] for spec in KINDS}
    assert groups == {group for group, _ in AGENT_READS}
    assert {spec.kind for spec in KINDS if spec.optional} == {
        "ClusterNetworkPolicy",
        "GlobalNetworkPolicy.projectcalico.org",
        "NetworkPolicy.projectcalico.org",
        "HostEndpoint.projectcalico.org",
    }


def test_the_binding_gives_that_role_to_the_daemonsets_service_account() -> None:
    binding = one("ClusterRoleBinding")
    sa = one("ServiceAccount")
    role = one("ClusterRole")["metadata"]["name"]
    rbac = "rbac.authorization.k8s.io"
    assert binding["roleRef"] == {"apiGroup": rbac, "kind": "ClusterRole", "name": role}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
    ]
    assert pod_spec()["serviceAccountName"] == sa["metadata"]["name"]


def test_only_the_bpffs_mount_init_container_is_privileged_and_the_agent_is_not() -> None:
    privileged = [c["name"] for c in all_containers() if c.get("securityContext", {}).get("privileged")]
    assert privileged == ["mount-bpffs"]
    assert [c["name"] for c in pod_spec()["initContainers"]] == ["mount-bpffs", "install-cni"]
    assert agent_container()["securityContext"]["privileged"] is False
    # it only mounts bpffs when absent, then exits
    command = " ".join(pod_spec()["initContainers"][0]["command"])
    assert "mount -t bpf bpf /sys/fs/bpf" in command and "stat -f -c %T /sys/fs/bpf" in command


def test_the_cni_plugin_is_installed_without_capabilities_into_the_hosts_cni_directories() -> None:
    [install] = [c for c in pod_spec()["initContainers"] if c["name"] == "install-cni"]
    assert install["command"][:2] == ["/opt/vethguard/venv/bin/vethguard", "cni-install"]
    assert install["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert install["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod_spec()["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in install["volumeMounts"]}
    assert mounts == {"/host/opt/cni/bin": "/opt/cni/bin", "/host/etc/cni/net.d": "/etc/cni/net.d"}
    args = install["command"]
    assert args[args.index("--bin-dir") + 1] == "/host/opt/cni/bin"
    assert args[args.index("--conf-dir") + 1] == "/host/etc/cni/net.d"
    agent_args = agent_container()["args"]
    assert args[args.index("--pin-root") + 1] == agent_args[agent_args.index("--pin-root") + 1]


def test_bidirectional_propagation_only_on_privileged_containers_as_the_api_server_requires() -> None:
    # The API server rejects Bidirectional on an unprivileged container; the JSON schema cannot.
    for c in all_containers():
        for m in c.get("volumeMounts", []):
            if m.get("mountPropagation") == "Bidirectional":
                assert c["securityContext"]["privileged"] is True, c["name"]


def test_the_agent_gets_exactly_the_capabilities_preflight_requires() -> None:
    caps = agent_container()["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    granted = set(caps["add"])
    assert granted == {"BPF", "NET_ADMIN", "SYS_ADMIN"}
    mask = sum(1 << getattr(preflight, f"CAP_{name}").bit for name in granted)
    assert preflight.missing_capabilities(mask) == []
    for name in granted - {"BPF"}:  # SYS_ADMIN stands in for BPF in bpf(2)
        assert preflight.missing_capabilities(mask & ~(1 << getattr(preflight, f"CAP_{name}").bit))


def test_the_agent_runs_on_every_node_in_the_host_network_at_node_critical_priority() -> None:
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]


def test_node_name_comes_from_the_downward_api_and_reaches_the_agent() -> None:
    c = agent_container()
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert c["args"][c["args"].index("--node") + 1] == "$(NODE_NAME)"
    assert c["args"][c["args"].index("--pin-root") + 1] == agent.DEFAULT_PIN_ROOT


def test_probes_hit_the_agents_health_address() -> None:
    c = agent_container()
    host, port = agent.DEFAULT_HEALTH_ADDR.split(":")
    assert c["args"][c["args"].index("--health-addr") + 1] == agent.DEFAULT_HEALTH_ADDR
    probes = (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez"))
    for probe, path in probes:
        assert c[probe]["httpGet"] == {"host": host, "path": path, "port": int(port)}


def test_bpffs_comes_from_the_host_with_host_to_container_propagation() -> None:
    mounts = {m["name"]: m for m in agent_container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert mounts["bpffs"]["mountPath"] == preflight.BPFFS
    assert mounts["bpffs"]["mountPropagation"] == "HostToContainer"
    assert volumes["bpffs"]["hostPath"]["path"] == preflight.BPFFS


def test_host_kernel_headers_are_mounted_read_only_where_preflight_looks() -> None:
    c = agent_container()
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    host_root = {e["name"]: e.get("value") for e in c["env"]}[preflight.HOST_ROOT_ENV]
    assert host_root == preflight.DEFAULT_HOST_ROOT
    for host_path in ("/lib/modules", "/usr/src"):
        m = mounts[f"{host_root}{host_path}"]
        assert m["readOnly"] is True
        assert volumes[m["name"]]["hostPath"]["path"] == host_path
    # the image's own /lib/modules and /usr/src stay visible as the fallback
    assert "/lib/modules" not in mounts and "/usr/src" not in mounts


def test_every_container_has_requests_and_limits_with_requests_within_limits() -> None:
    units = {"Mi": 2**20, "Gi": 2**30}

    def qty(v: str) -> float:
        if v.endswith("m"):
            return int(v[:-1]) / 1000
        for suffix, mult in units.items():
            if v.endswith(suffix):
                return int(v[: -len(suffix)]) * mult
        return float(v)

    for c in all_containers():
        res = c["resources"]
        for kind in ("cpu", "memory"):
            assert qty(str(res["requests"][kind])) <= qty(str(res["limits"][kind])), (c["name"], kind)
    # the agent's request covers its measured peak resident set (VmHWM 233740 KiB, bcc/LLVM loaded)
    assert qty(agent_container()["resources"]["requests"]["memory"]) >= 233_740 * 1024


def uninstall_pod_spec() -> dict[str, Any]:
    [ds] = [d for d in uninstall_documents() if d["kind"] == "DaemonSet"]
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


def test_the_uninstall_daemonset_runs_everywhere_in_the_agents_namespace_with_its_labels() -> None:
    kinds = sorted(d["kind"] for d in uninstall_documents())
    assert kinds == ["DaemonSet", "Namespace"]  # the namespace went with `kubectl delete -k deploy/`
    for doc in uninstall_documents():
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vethguard"
    [ds] = [d for d in uninstall_documents() if d["kind"] == "DaemonSet"]
    assert (
        ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    )
    assert ds["metadata"]["name"] != one("DaemonSet")["metadata"]["name"]
    spec = uninstall_pod_spec()
    assert spec["hostNetwork"] is True and {"operator": "Exists"} in spec["tolerations"]
    assert spec["automountServiceAccountToken"] is False


def test_the_uninstall_container_is_unprivileged_with_net_admin_only() -> None:
    [c] = uninstall_pod_spec()["containers"]
    ctx = c["securityContext"]
    assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    for m in c["volumeMounts"]:
        assert m.get("mountPropagation") != "Bidirectional"


def test_uninstall_uses_the_agents_and_the_cni_installs_host_directories() -> None:
    [c] = uninstall_pod_spec()["containers"]
    script = " ".join(c["command"][2:]).split()
    assert c["command"][:2] == ["/bin/sh", "-c"] and script[:2] == [
        "/opt/vethguard/venv/bin/vethguard",
        "uninstall",
    ]

    def arg(argv: list[str], flag: str) -> str:
        return argv[argv.index(flag) + 1]

    agent_args = agent_container()["args"]
    [install_cni] = [i for i in pod_spec()["initContainers"] if i["name"] == "install-cni"]
    assert arg(script, "--pin-root") == arg(agent_args, "--pin-root")
    assert arg(script, "--state-dir") == arg(agent_args, "--state-dir") == "/run/vethguard"
    assert arg(script, "--cni-bin-dir") == arg(install_cni["command"], "--bin-dir")
    assert arg(script, "--cni-conf-dir") == arg(install_cni["command"], "--conf-dir")
    host = {v["name"]: v["hostPath"]["path"] for v in uninstall_pod_spec()["volumes"]}
    mounts = {m["mountPath"]: host[m["name"]] for m in c["volumeMounts"]}
    agent_host = {v["name"]: v["hostPath"]["path"] for v in pod_spec()["volumes"] if "hostPath" in v}
    agent_mounts = {m["mountPath"]: agent_host[m["name"]] for m in agent_container()["volumeMounts"]}
    install_mounts = {m["mountPath"]: agent_host[m["name"]] for m in install_cni["volumeMounts"]}
    for path in ("/sys/fs/bpf", "/run/vethguard"):
        assert mounts[path] == agent_mounts[path] == path
    for path in ("/host/opt/cni/bin", "/host/etc/cni/net.d"):
        assert mounts[path] == install_mounts[path]
    # ready only once the uninstall succeeded (the shell reached the marker and the sleep)
    assert "&& : > /tmp/uninstalled && exec sleep infinity" in c["command"][2]
    assert c["readinessProbe"]["exec"]["command"][-1] == "[ -e /tmp/uninstalled ]"
