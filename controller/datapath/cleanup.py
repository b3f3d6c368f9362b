"""Remove what vethguard attached in this network namespace, and only that (`vethguard uninstall`).

1. our tcx links (pod programs, found by program name: from_pod / to_pod; controller/datapath/
   tcx.py) and our filters, on every interface: the exact handle, priority and name the
   Attachers install (pod veths: vethguard-from-pod / vethguard-to-pod; uplinks:
   vethguard-from-uplink / vethguard-uplink), each on its own hook; any other link or filter stays;
2. the clsact qdiscs the node's ledger lists (controller/datapath/ledger.py), each only when
   the interface still exists under the recorded name and no filter is left on either hook; a
   clsact someone else created (not in the ledger) is never deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from controller.core.errors import VethguardError
from controller.datapath.attach import PARENT_EGRESS, PARENT_IDS, PARENT_INGRESS, Attacher, remaining_filters
from controller.datapath.netlink import IPRoute, NetlinkError
from controller.datapath.tcx import TcxAttacher, tcx_supported
from controller.datapath.uplink import uplink_attacher

HOOK_NAMES = {PARENT_INGRESS: "ingress", PARENT_EGRESS: "egress"}
_HOOK_BY_ID = {PARENT_IDS[p]: name for p, name in HOOK_NAMES.items()}


class Step(NamedTuple):
    """One thing removed or kept: kind (tcx-link, filter, clsact, pins, ledger, cni-binary, cni-config),
    what (interface/hook, path) and why or how."""

    kind: str
    name: str
    detail: str = ""


def links() -> dict[int, str]:
    """ifindex -> name of every interface in this network namespace."""
    with IPRoute() as ipr:
        return {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}


def remove_filters(interfaces: Mapping[int, str]) -> tuple[list[Step], dict[int, str]]:
    """Detach our filters (pod and uplink sets) from every interface given: what was removed,
    and the interfaces it was removed from."""
    removed: list[Step] = []
    detached: dict[int, str] = {}
    attachers: list[Attacher | TcxAttacher] = [Attacher(), uplink_attacher()]
    if tcx_supported():
        # links found by program name (their pins go with the pins); filters: the next attacher's
        attachers.insert(0, TcxAttacher(legacy_names={}))
    for attacher in attachers:
        for ifindex, ifname in sorted(interfaces.items()):
            hooks = attacher.hooks_with_ours(ifindex)
            if not hooks:
                continue
            attacher.detach(ifindex)
            detached[ifindex] = ifname
            for parent in hooks:
                removed.append(Step(attacher.kind, f"{ifname} {HOOK_NAMES[parent]}", attacher.names[parent]))
    return removed, detached


def _describe(f: Any) -> str:
    kind = f.get_attr("TCA_KIND") or "?"
    hook = _HOOK_BY_ID.get(int(f["parent"]), hex(int(f["parent"])))
    options = f.get_attr("TCA_OPTIONS")
    name = options.get_attr("TCA_BPF_NAME") if kind == "bpf" and options else None
    return f"{kind}{' ' + name if name else ''} prio {int(f['info']) >> 16} on {hook}"


def _has_clsact(ipr: Any, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def remove_clsacts(
    recorded: Mapping[int, str], interfaces: Mapping[int, str], detached: Mapping[int, str]
) -> tuple[list[Step], list[Step]]:
    """Delete the ledger's (`recorded`) clsacts that are still ours to delete: (removed, kept
    with why). The clsacts of `detached` interfaces (ours removed from them) that the ledger
    does not list are reported as kept."""
    removed: list[Step] = []
    kept: list[Step] = []
    with IPRoute() as ipr:
        for ifindex, ifname in sorted(detached.items()):
            if recorded.get(ifindex) != ifname and _has_clsact(ipr, ifindex):
                kept.append(
                    Step(
                        "clsact",
                        f"{ifname} (ifindex {ifindex})",
                        "not in the ledger: someone else created it",
                    )
                )
        for ifindex, ifname in sorted(recorded.items()):
            where = f"{ifname} (ifindex {ifindex})"
            current = interfaces.get(ifindex)
            if current is None:
                continue  # the interface is gone, and its clsact with it: nothing to say
            if current != ifname:
                kept.append(
                    Step("clsact", where, f"ifindex {ifindex} is now {current}: not the interface recorded")
                )
                continue
            if not _has_clsact(ipr, ifindex):
                continue  # deleted by someone already
            try:
                others = remaining_filters(ipr, ifindex)
            except NetlinkError as exc:
                raise VethguardError(f"cannot list the filters of {where}: {exc}") from exc
            if others:
                foreign = ", ".join(dict.fromkeys(_describe(f) for f in others))  # u32: table + filter
                kept.append(
                    Step("clsact", where, f"created by vethguard, but other filters use it: {foreign}")
                )
                continue
            try:
                ipr.tc("del", "clsact", ifindex)
            except NetlinkError as exc:
                raise VethguardError(f"cannot delete the clsact of {where}: {exc}") from exc
            removed.append(Step("clsact", where, "created by vethguard (ledger), no filter left"))
    return removed, kept
