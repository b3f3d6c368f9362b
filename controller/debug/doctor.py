"""`vethguard doctor [--lab NAME | --kubeconfig FILE]`: is vethguard able to enforce here, and
is it enforcing? One row per check (CHECK, STATUS ok|warn|FAIL, DETAIL), exit 1 when one fails.

  node/<check>      the agent's own preflight on this machine (kernel, headers, bpffs,
                    capabilities, memlock, bcc: controller.agent.preflight)
  api               the objects the agent watches can be listed (a failure is the one line of
                    controller.agent.api_errors); lists it may not read are warnings
  crd/<kind>        the optional APIs (ClusterNetworkPolicy's CRD, Calico's API server) are
                    served: warn when not (those policies cannot exist, none is enforced)
  rbac/<resource>   on a cluster: the agent's ServiceAccount may list and watch each kind
                    (SubjectAccessReview); a lab's API server has no RBAC
  agent/<node>      every node's agent answers, is ready, has no errors, and has realized the
                    state the API is at (warn: behind, as `explain` says "not caught up yet")

The checks are small functions over narrow inputs (a Target, a preflight runner, an access
reviewer) so tests drive them without a cluster.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from controller.agent.api_errors import describe
from controller.agent.kube_api import AGENT_NAMESPACE, AGENT_READS, AGENT_SERVICE_ACCOUNT
from controller.agent.realization import differing_kinds
from controller.compiler import calico
from controller.core.errors import VethguardError
from controller.debug.inputs import CALICO_FIELDS, CNP_PATH, LabTarget, Target
from controller.debug.render import dump, table

OK, WARN, FAIL = "ok", "warn", "FAIL"
OPTIONAL_APIS = (
    ("clusternetworkpolicies.policy.networking.k8s.io", CNP_PATH),
    *((f"{plural}.{calico.GROUP}", f"/apis/{calico.API_VERSION}/{plural}") for _, _, plural in CALICO_FIELDS),
)

# (group, resource, verb) -> allowed?, for the agent's ServiceAccount
Reviewer = Callable[[str, str, str], bool]


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str


def preflight_checks(run: Callable[[], list[tuple[str, list[Any]]]]) -> list[Check]:
    out = []
    for name, problems in run():
        if not problems:
            out.append(Check(f"node/{name}", OK, ""))
        out += [Check(f"node/{name}", FAIL, p.message) for p in problems]
    return out


def api_check(target: Target) -> tuple[Check, Any]:
    """Listing what the agent watches; the objects (None when the list failed)."""
    try:
        raw = target.objects()
    except Exception as exc:
        line = describe(exc) or (str(exc) if isinstance(exc, VethguardError) else None)
        if line is None:
            raise
        return Check("api", FAIL, line), None
    counts = f"{len(raw.pods)} pods, {len(raw.namespaces)} namespaces, {len(raw.policies)} NetworkPolicies"
    if raw.warnings:
        return Check("api", WARN, f"{counts}; " + "; ".join(raw.warnings)), raw
    return Check("api", OK, counts), raw


def crd_checks(served: Callable[[str], int]) -> list[Check]:
    out = []
    for kind, path in OPTIONAL_APIS:
        code = served(path)
        if code == 200:
            out.append(Check(f"crd/{kind}", OK, f"served ({path})"))
        elif code == 404:
            out.append(
                Check(f"crd/{kind}", WARN, f"not served ({path}): no such policies exist or are enforced")
            )
        else:
            out.append(Check(f"crd/{kind}", WARN, f"cannot tell: GET {path} answered {code}"))
    return out


def rbac_checks(review: Reviewer | None) -> list[Check]:
    if review is None:
        return [Check("rbac", OK, "not applicable: the lab's API server has no RBAC")]
    out = []
    for group, resource in AGENT_READS:
        name = f"rbac/{resource}.{group}" if group else f"rbac/{resource}"
        try:
            missing = [verb for verb in ("list", "watch") if not review(group, resource, verb)]
        except Exception as exc:
            line = describe(exc)
            if line is None:
                raise
            out.append(Check(name, WARN, f"cannot review the agent's access: {line}"))
            continue
        if missing:
            out.append(
                Check(
                    name,
                    FAIL,
                    f"{AGENT_SERVICE_ACCOUNT} may not {' or '.join(missing)} it (deploy/rbac.yaml)",
                )
            )
        else:
            out.append(Check(name, OK, "list, watch"))
    return out


def agent_checks(
    nodes: Sequence[str], statuses: dict[str, dict[str, Any] | None], listed: Mapping[str, str]
) -> list[Check]:
    """Per node: the agent answers, is ready, has no errors, and realized the state the API
    listed (`listed`: kind -> digest, RawObjects.digests; compared by equality only)."""
    out = []
    for node in nodes:
        status = statuses.get(node)
        name = f"agent/{node}"
        if status is None:
            out.append(Check(name, FAIL, "the agent does not answer /status (not running?)"))
            continue
        if not status.get("ready"):
            out.append(Check(name, FAIL, "not ready: " + _errors(status)))
            continue
        realized = status.get("realized") or {}
        what = f"realized {sum(int(k.get('objects') or 0) for k in realized.values())} objects"
        behind = differing_kinds(listed, status)
        if status.get("errors"):
            out.append(Check(name, WARN, f"ready, {what}, errors: " + _errors(status)))
        elif behind:
            out.append(
                Check(
                    name,
                    WARN,
                    f"ready, {what}, but other {', '.join(behind)} objects than the API lists now: "
                    "not caught up yet (or the API changed since the list)",
                )
            )
        else:
            out.append(Check(name, OK, f"ready, {what}: the state the API lists"))
    return out


def _errors(status: dict[str, Any]) -> str:
    errors = status.get("errors") or []
    shown = [
        f"{e.get('object') or ''} {e.get('field') or ''}: {e.get('message')}".strip() for e in errors[:3]
    ]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return ("; ".join(shown) + more) if shown else "no errors reported"


# -- the edges: what a lab or a cluster answers --------------------------------------------------


def lab_served(target: LabTarget) -> Callable[[str], int]:
    return lambda path: int(target.client.request("GET", path)[0])


def cluster_served(kubeconfig: str | None) -> Callable[[str], int]:
    from kubernetes.client.exceptions import ApiException

    from controller.agent.kube_api import load_api_client
    from controller.debug.inputs import REQUEST_TIMEOUT

    api = load_api_client(kubeconfig)

    def served(path: str) -> int:
        try:
            api.call_api(path, "GET", _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            return int(exc.status or 0)
        return 200

    return served


def cluster_reviewer(kubeconfig: str | None) -> Reviewer:
    from kubernetes import client

    from controller.agent.kube_api import load_api_client

    authz = client.AuthorizationV1Api(load_api_client(kubeconfig))

    def review(group: str, resource: str, verb: str) -> bool:
        body = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=AGENT_SERVICE_ACCOUNT,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{AGENT_NAMESPACE}"],
                resource_attributes=client.V1ResourceAttributes(group=group, resource=resource, verb=verb),
            )
        )
        result = authz.create_subject_access_review(body)
        return bool(result.status is not None and result.status.allowed)

    return review


def run(
    target: Target, kubeconfig: str | None, preflight: Callable[[], list[tuple[str, list[Any]]]]
) -> list[Check]:
    checks = preflight_checks(preflight)
    api, raw = api_check(target)
    checks.append(api)
    if raw is None:
        return checks  # nothing more can be asked of an API that does not answer
    lab = isinstance(target, LabTarget)
    checks += crd_checks(lab_served(target) if isinstance(target, LabTarget) else cluster_served(kubeconfig))
    checks += rbac_checks(None if lab else cluster_reviewer(kubeconfig))
    nodes = target.nodes()
    statuses = {n.name: target.agent_status(n) for n in nodes}
    checks += agent_checks([n.name for n in nodes], statuses, raw.digests)
    return checks


def cmd_doctor(args: argparse.Namespace) -> int:
    from controller.agent import preflight
    from controller.debug.target_options import make_target

    checks = run(make_target(args), args.kubeconfig, preflight.run_checks)
    if args.output in ("json", "yaml"):
        dump({"kind": "vethguard.doctor", "items": [asdict(c) for c in checks]}, args.output)
    else:
        print(table(("CHECK", "STATUS", "DETAIL"), [(c.name, c.status, c.detail) for c in checks]))
        failed = sum(c.status == FAIL for c in checks)
        warned = sum(c.status == WARN for c in checks)
        print(f"\n{len(checks)} checks: {failed} failed, {warned} warnings")
    return 1 if any(c.status == FAIL for c in checks) else 0


def register(sub: Any) -> None:
    from controller.debug.target_options import target_args

    p = sub.add_parser(
        "doctor",
        help="can vethguard enforce here, and is it: this node's preflight, the API, CRDs, the "
        "agent's RBAC, every agent ready and caught up",
    )
    target_args(p, ("text", "json", "yaml"))
    p.set_defaults(func=cmd_doctor)
