"""Attach the tc programs to a host-side veth, in the current network namespace (the attach, on
the path of every new pod, with controller.datapath.rtnl; the rest with pyroute2).

clsact is added only when absent (and only a clsact we added may be removed again: the ones
this process added, and across processes the node's ledger, controller/datapath/ledger.py); our
filters have a fixed handle and priority and are installed with "replace", so swapping in a
newly loaded program is atomic (no window without a program) and attaching twice is a no-op.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from controller.core.errors import VethguardError
from controller.datapath import ledger, rtnl
from controller.datapath.netlink import IPRoute, NetlinkError

PARENT_INGRESS = "ffff:fff2"  # tc ingress hook of clsact: packets leaving the pod
PARENT_EGRESS = "ffff:fff3"  # tc egress hook of clsact: packets entering the pod
PARENT_IDS = {PARENT_INGRESS: 0xFFFFFFF2, PARENT_EGRESS: 0xFFFFFFF3}
FILTER_HANDLE = 1
# Runs before filters added with tc's default priority (49152) and stays clear of prio 1,
# which other datapaths (Cilium) use for their own programs.
FILTER_PRIO = 10
FILTER_NAME = {PARENT_INGRESS: "vethguard-from-pod", PARENT_EGRESS: "vethguard-to-pod"}

ENOENT = 2
EEXIST = 17
ENODEV = 19
EINVAL = 22
TCA_BPF_ID = 11  # the attached program's id; pyroute2 0.9 does not decode it (an UNKNOWN nla)
# linux/rtnetlink.h, pkt_sched.h, pkt_cls.h, if_ether.h
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_BPF_CLASSID = 3
TCA_BPF_FD = 6
TCA_BPF_NAME = 7
TCA_BPF_FLAGS = 8
TCA_BPF_FLAG_ACT_DIRECT = 1
TC_H_CLSACT = 0xFFFFFFF1
CLSACT_HANDLE = 0xFFFF0000
ETH_P_ALL = 0x0003


def _clsact_msg(ifindex: int) -> bytes:
    return rtnl.TCMSG.pack(socket.AF_UNSPEC, ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0) + rtnl.attr(
        TCA_KIND, rtnl.asciiz("clsact")
    )


def _filter_msg(ifindex: int, parent: str, fd: int, name: str) -> bytes:
    """`tc filter replace dev IF parent P handle 1 prio 10 protocol all bpf da fd FD name N
    classid 1`, as pyroute2 and tc send it (the same protocol: a replace of either's filter)."""
    options = (
        rtnl.attr(TCA_BPF_CLASSID, rtnl.u32(1))
        + rtnl.attr(TCA_BPF_FD, rtnl.u32(fd))
        + rtnl.attr(TCA_BPF_NAME, rtnl.asciiz(name))
        + rtnl.attr(TCA_BPF_FLAGS, rtnl.u32(TCA_BPF_FLAG_ACT_DIRECT))
    )
    info = (FILTER_PRIO << 16) | socket.htons(ETH_P_ALL)
    return (
        rtnl.TCMSG.pack(socket.AF_UNSPEC, ifindex, FILTER_HANDLE, PARENT_IDS[parent], info)
        + rtnl.attr(TCA_KIND, rtnl.asciiz("bpf"))
        + rtnl.attr(TCA_OPTIONS, options)
    )


RTM_GETTFILTER = 46


def filters_named(ifindex: int, names: dict[str, str]) -> list[str]:
    """The hooks (parents) of ifindex carrying a bpf filter with the name `names` gives that hook,
    by one raw netlink dump per hook (~0.1 ms; none when ifindex has no clsact or is gone)."""
    out = []
    with rtnl.Rtnl() as nl:
        for parent, name in names.items():
            header = rtnl.TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, PARENT_IDS[parent], 0)
            try:
                found = nl.dump(RTM_GETTFILTER, header, rtnl.TCMSG.size, "filters")
            except rtnl.NetlinkError:
                continue  # no clsact (EINVAL) or no interface
            for msg in found:
                a = msg.attributes()
                if rtnl.as_str(a.get(TCA_KIND)) != "bpf" or TCA_OPTIONS not in a:
                    continue
                if rtnl.as_str(rtnl.parse_attrs(a[TCA_OPTIONS]).get(TCA_BPF_NAME)) == name:
                    out.append(parent)
                    break
    return out


def _nla_prog_id(opts: Any) -> int | None:
    """TCA_BPF_ID of a bpf filter's TCA_OPTIONS, read from the raw attribute."""
    for name, value in opts["attrs"]:
        if name != "UNKNOWN" or value["header"]["type"] != TCA_BPF_ID:
            continue
        start = value.offset + 4  # skip the nla header (length, type)
        return int.from_bytes(value.data[start : start + 4], sys.byteorder)
    return None


def remaining_filters(ipr: Any, ifindex: int) -> list[Any]:
    """Every filter on both hooks of ifindex's clsact (a dump's per-priority chain entries,
    which carry no options, left out); raises NetlinkError without clsact or interface."""
    return [
        f
        for p in (PARENT_INGRESS, PARENT_EGRESS)
        for f in ipr.get_filters(index=ifindex, parent=PARENT_IDS[p])
        if f.get_attr("TCA_OPTIONS")
    ]


@dataclass
class Attacher:
    """Our filters on the hooks of `names` (parent -> filter name; default: both pod hooks).
    Tracks which clsact qdiscs this process created so detach never removes anyone else's,
    and appends each to the node's clsact ledger when given one (`vethguard uninstall` reads it)."""

    created_clsact: set[int] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=lambda: dict(FILTER_NAME))
    ledger_file: Path | None = None
    kind: ClassVar[str] = "filter"

    def attach(self, ifindex: int, from_pod_fd: int, to_pod_fd: int) -> None:
        """from_pod on the tc ingress hook, to_pod on the tc egress hook of a pod's veth."""
        self.attach_programs(ifindex, {PARENT_INGRESS: from_pod_fd, PARENT_EGRESS: to_pod_fd})

    def attach_programs(self, ifindex: int, fds: dict[str, int]) -> None:
        """Acknowledged netlink requests on a fresh socket (~0.3 ms; pyroute2 took ~7 ms): add
        clsact exclusively (EEXIST: someone, maybe us earlier, has one), replace each filter."""
        with rtnl.Rtnl() as nl:
            try:
                nl.request(rtnl.RTM_NEWQDISC, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, _clsact_msg(ifindex))
                self.created_clsact.add(ifindex)
                if self.ledger_file is not None:
                    ledger.record(self.ledger_file, ifindex)
            except rtnl.NetlinkError as e:
                if e.code == ENODEV:
                    raise VethguardError(
                        f"no interface with ifindex {ifindex} in this network namespace"
                    ) from e
                if e.code != EEXIST:  # EEXIST: already there (or lost a race with another adder)
                    raise VethguardError(f"cannot add clsact on ifindex {ifindex}: {e}") from e
            for parent, fd in fds.items():
                try:
                    nl.request(
                        rtnl.RTM_NEWTFILTER,
                        rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
                        _filter_msg(ifindex, parent, fd, self.names[parent]),
                    )
                except rtnl.NetlinkError as e:
                    if e.code == ENODEV:
                        raise VethguardError(
                            f"no interface with ifindex {ifindex} in this network namespace"
                        ) from e
                    raise VethguardError(
                        f"cannot install the {self.names[parent]} filter on ifindex {ifindex}: {e}"
                    ) from e

    def _our_filters(self, ipr: Any, ifindex: int, parent: str) -> list[Any]:
        ours = []
        for f in ipr.get_filters(index=ifindex, parent=PARENT_IDS[parent]):
            opts = f.get_attr("TCA_OPTIONS")
            if f["handle"] != FILTER_HANDLE or (f["info"] >> 16) != FILTER_PRIO or not opts:
                continue
            if opts.get_attr("TCA_BPF_NAME") == self.names[parent]:
                ours.append(f)
        return ours

    def hooks_with_ours(self, ifindex: int) -> list[str]:
        """The hooks (parents) of ifindex that carry our filter (none: no clsact, no interface)."""
        with IPRoute() as ipr:
            out = []
            for parent in self.names:
                try:
                    if self._our_filters(ipr, ifindex, parent):
                        out.append(parent)
                except NetlinkError:
                    continue
            return out

    def attached(self, ifindex: int) -> bool:
        """All of our filters are present on ifindex."""
        with IPRoute() as ipr:
            try:
                return all(self._our_filters(ipr, ifindex, p) for p in self.names)
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
            for parent in self.names:
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
                if not remaining_filters(ipr, ifindex):  # we created it and nobody else uses it
                    try:
                        ipr.tc("del", "clsact", ifindex)
                    except NetlinkError as e:
                        if e.code not in (ENOENT, EINVAL):
                            raise
