"""Attach the tc programs to a host-side veth with pyroute2, in the current network namespace.

clsact is added only when absent (and only a clsact we added may be removed again); our
filters have a fixed handle and priority and are installed with "replace", so swapping in a
newly loaded program is atomic (no window without a program) and attaching twice is a no-op.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from controller.errors import VethguardError

PARENT_INGRESS = "ffff:fff2"  # tc ingress hook of clsact: packets leaving the pod
PARENT_EGRESS = "ffff:fff3"  # tc egress hook of clsact: packets entering the pod
_PARENT_IDS = {PARENT_INGRESS: 0xFFFFFFF2, PARENT_EGRESS: 0xFFFFFFF3}
FILTER_HANDLE = 1
# Runs before filters added with tc's default priority (49152) and stays clear of prio 1,
# which other datapaths (Cilium) use for their own programs.
FILTER_PRIO = 10
FILTER_NAME = {PARENT_INGRESS: "vethguard-from-pod", PARENT_EGRESS: "vethguard-to-pod"}

ENOENT = 2
EEXIST = 17
EINVAL = 22
TCA_BPF_ID = 11  # the attached program's id; pyroute2 0.9 does not decode it (an UNKNOWN nla)


def _nla_prog_id(opts: Any) -> int | None:
    """TCA_BPF_ID of a bpf filter's TCA_OPTIONS, read from the raw attribute."""
    for name, value in opts["attrs"]:
        if name != "UNKNOWN" or value["header"]["type"] != TCA_BPF_ID:
            continue
        start = value.offset + 4  # skip the nla header (length, type)
        return int.from_bytes(value.data[start : start + 4], sys.byteorder)
    return None


@dataclass
class Attacher:
    """Tracks which clsact qdiscs this process created so detach never removes anyone else's."""

    created_clsact: set[int] = field(default_factory=set)

    def _has_clsact(self, ipr: Any, ifindex: int) -> bool:
        return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))

    def attach(self, ifindex: int, from_pod_fd: int, to_pod_fd: int) -> None:
        with IPRoute() as ipr:
            try:
                ipr.link("get", index=ifindex)
            except NetlinkError as e:
                raise VethguardError(f"no interface with ifindex {ifindex} in this network namespace") from e
            if not self._has_clsact(ipr, ifindex):
                try:
                    ipr.tc("add", "clsact", ifindex)
                    self.created_clsact.add(ifindex)
                except NetlinkError as e:
                    if e.code != EEXIST:  # lost a race with another adder: fine
                        raise VethguardError(f"cannot add clsact on ifindex {ifindex}: {e}") from e
            for parent, fd in ((PARENT_INGRESS, from_pod_fd), (PARENT_EGRESS, to_pod_fd)):
                try:
                    ipr.tc(
                        "replace-filter",
                        "bpf",
                        ifindex,
                        f":{FILTER_HANDLE}",
                        fd=fd,
                        name=FILTER_NAME[parent],
                        parent=parent,
                        classid=1,
                        direct_action=True,
                        prio=FILTER_PRIO,
                    )
                except NetlinkError as e:
                    raise VethguardError(
                        f"cannot install the {FILTER_NAME[parent]} filter on ifindex {ifindex}: {e}"
                    ) from e

    def _our_filters(self, ipr: Any, ifindex: int, parent: str) -> list[Any]:
        ours = []
        for f in ipr.get_filters(index=ifindex, parent=_PARENT_IDS[parent]):
            opts = f.get_attr("TCA_OPTIONS")
            if f["handle"] != FILTER_HANDLE or (f["info"] >> 16) != FILTER_PRIO or not opts:
                continue
            if opts.get_attr("TCA_BPF_NAME") == FILTER_NAME[parent]:
                ours.append(f)
        return ours

    def attached(self, ifindex: int) -> bool:
        """Both of our filters are present on ifindex."""
        with IPRoute() as ipr:
            try:
                return all(self._our_filters(ipr, ifindex, p) for p in (PARENT_INGRESS, PARENT_EGRESS))
            except NetlinkError:
                return False

    def attached_prog_ids(self, ifindex: int) -> dict[str, int | None]:
        """{"from_pod": id, "to_pod": id} of the programs our filters on ifindex run (None: no filter)."""
        out: dict[str, int | None] = {}
        with IPRoute() as ipr:
            for key, parent in (("from_pod", PARENT_INGRESS), ("to_pod", PARENT_EGRESS)):
                try:
                    ours = self._our_filters(ipr, ifindex, parent)
                except NetlinkError:
                    ours = []
                out[key] = _nla_prog_id(ours[0].get_attr("TCA_OPTIONS")) if len(ours) == 1 else None
        return out

    def detach(self, ifindex: int) -> None:
        """Remove our filters (identified by handle, prio and name); idempotent."""
        with IPRoute() as ipr:
            for parent in (PARENT_INGRESS, PARENT_EGRESS):
                try:
                    present = bool(self._our_filters(ipr, ifindex, parent))
                except NetlinkError as e:
                    if e.code in (ENOENT, EINVAL):  # no clsact or no such interface
                        continue
                    raise
                if not present:
                    continue
                try:
                    ipr.tc("del-filter", "bpf", ifindex, f":{FILTER_HANDLE}", parent=parent, prio=FILTER_PRIO)
                except NetlinkError as e:
                    if e.code != ENOENT:
                        raise VethguardError(f"cannot remove our filter from ifindex {ifindex}: {e}") from e
            if ifindex in self.created_clsact:
                self.created_clsact.discard(ifindex)
                remaining = [
                    f
                    for p in (PARENT_INGRESS, PARENT_EGRESS)
                    for f in ipr.get_filters(index=ifindex, parent=_PARENT_IDS[p])
                    if f.get_attr("TCA_OPTIONS")
                ]
                if not remaining:  # we created it and nobody else uses it
                    try:
                        ipr.tc("del", "clsact", ifindex)
                    except NetlinkError as e:
                        if e.code not in (ENOENT, EINVAL):
                            raise
