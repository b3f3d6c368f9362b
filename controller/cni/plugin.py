"""vethguard-cni: a chained CNI plugin (CNI spec 1.0) that closes a new pod's veth before any
agent knows the pod, so a pod created while the agent is down, hung or restarting is never open.

The container runtime runs it after the main plugin, in the node's network namespace, before the
pod's containers start. ADD:
  1. the pod's host-side interface is the entry of prevResult.interfaces without a sandbox (what
     ptp, bridge and kindnet list), or else the peer of CNI_IFNAME inside CNI_NETNS;
  2. the programs the agent pinned (<pinRoot>/<node>/prog_from_pod, prog_to_pod) are attached to
     it as the agent attaches them (controller/datapath/tcx.py): clsact filters (direct-action,
     fixed handle and prio), or with "tcAttach": "tcx" tcx links pinned at
     <pinRoot>/<node>/links/<netns inode>-<ifindex>-<ingress|egress>; either way the agent's
     later attach swaps the program in place, never a second attachment;
  3. its endpoint entry is written PENDING with the pod's addresses from prevResult.ips, unless
     the agent wrote one first (BPF_NOEXIST), and its addresses go into vg_local. PENDING drops
     everything but the always-allowed paths until the agent realizes the pod's policy.
Anything that fails is an error result: the runtime does not start the pod (fail closed), and
kubelet retries the sandbox. DEL and GC do nothing: the veth and its filters go with the
namespace (a link's pin stays, defunct, until the agent sweeps it) and the agent removes the
endpoint entry. CHECK verifies the programs are attached. No bcc, no LLVM:
only bpf(2) on pinned objects and rtnetlink, so it takes milliseconds.

Network configuration keys: "pinRoot" (default /sys/fs/bpf/vethguard), "nodeName" (the agent's
--node; may be left out when pinRoot holds exactly one node's pins), "stateDir" (default
/run/vethguard: a clsact the plugin creates is recorded in its clsact-<node> ledger there, for
`vethguard uninstall`; controller/datapath/ledger.py) and "tcAttach" ("clsact", the default,
or "tcx": set it as the agent's VETHGUARD_TC_ATTACH; without it the plugin reads the
environment's VETHGUARD_TC_ATTACH, as the agent does).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.core.errors import VethguardError
from controller.datapath import abi, bpfsys, codecs, ledger
from controller.datapath.attach import PARENT_EGRESS, PARENT_INGRESS
from controller.datapath.tcx import attach_mode, pod_attacher

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
DEFAULT_PIN_ROOT = "/sys/fs/bpf/vethguard"
# CNI error codes (spec: 1-99 reserved; 100+ plugin-specific)
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_CONFIG = 7
ERR_NOT_READY = 100  # the agent has not pinned its programs on this node yet
ERR_ATTACH = 101


class CniError(VethguardError):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


@dataclass(frozen=True)
class Request:
    command: str
    container_id: str
    netns: str
    ifname: str
    config: Mapping[str, Any]

    @property
    def version(self) -> str:
        return str(self.config.get("cniVersion", "1.0.0"))


def parse(env: Mapping[str, str], stdin: str) -> Request:
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return Request(command, "", "", "", {"cniVersion": _version_of(stdin)})
    if command not in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        raise CniError(ERR_INVALID_CONFIG, f"CNI_COMMAND {command!r} is not one of ADD, DEL, CHECK, VERSION")
    try:
        config = json.loads(stdin)
    except ValueError as exc:
        raise CniError(ERR_INVALID_CONFIG, f"network configuration is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CniError(ERR_INVALID_CONFIG, "network configuration must be a JSON object")
    if str(config.get("cniVersion", "1.0.0")) not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"cniVersion {config.get('cniVersion')!r} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    return Request(
        command,
        env.get("CNI_CONTAINERID", ""),
        env.get("CNI_NETNS", ""),
        env.get("CNI_IFNAME", "eth0"),
        config,
    )


def _version_of(stdin: str) -> str:
    try:
        return str(json.loads(stdin or "{}").get("cniVersion", "1.0.0"))
    except (ValueError, AttributeError):
        return "1.0.0"


def pin_dir(config: Mapping[str, Any]) -> Path:
    root = Path(str(config.get("pinRoot") or DEFAULT_PIN_ROOT))
    node = config.get("nodeName")
    if node:
        return root / str(node)
    nodes = [p for p in root.iterdir() if (p / "prog_from_pod").exists()] if root.is_dir() else []
    if len(nodes) != 1:
        raise CniError(
            ERR_NOT_READY if not nodes else ERR_INVALID_CONFIG,
            f"cannot tell this node's pins under {root}: "
            + (
                "none yet (the vethguard agent has not started on this node)"
                if not nodes
                else f"{len(nodes)} nodes; set nodeName in the network configuration"
            ),
        )
    return nodes[0]


def host_interface(config: Mapping[str, Any], ifname: str) -> int:
    """ifindex (in this namespace) of the pod's host-side interface, from prevResult."""
    prev = config.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "no prevResult: vethguard-cni runs chained after the main plugin")
    for iface in prev.get("interfaces") or []:
        if isinstance(iface, dict) and not iface.get("sandbox") and iface.get("name"):
            try:
                return socket.if_nametoindex(str(iface["name"]))
            except OSError:
                continue
    raise CniError(
        ERR_INVALID_CONFIG,
        f"prevResult names no host-side interface for {ifname}",
        "the main plugin must list the host end of the pod's veth (no sandbox)",
    )


def pod_addresses(config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The pod's first IPv4 and IPv6 address from prevResult.ips."""
    v4 = v6 = None
    prev = config.get("prevResult") or {}
    for entry in prev.get("ips") or []:
        try:
            addr = ipaddress.ip_interface(str(entry.get("address"))).ip
        except (ValueError, AttributeError):
            raise CniError(ERR_INVALID_CONFIG, f"prevResult.ips: bad address {entry!r}") from None
        if addr.version == 4 and v4 is None:
            v4 = str(addr)
        elif addr.version == 6 and v6 is None:
            v6 = str(addr)
    return v4, v6


def add(req: Request) -> dict[str, Any]:
    pins = pin_dir(req.config)
    ifindex = host_interface(req.config, req.ifname)
    ipv4, ipv6 = pod_addresses(req.config)
    fds: dict[str, int] = {}
    try:
        for parent, name in ((PARENT_INGRESS, "from_pod"), (PARENT_EGRESS, "to_pod")):
            try:
                fds[parent] = bpfsys.obj_get(str(pins / f"prog_{name}"))
            except OSError as exc:
                raise CniError(
                    ERR_NOT_READY,
                    f"no pinned program {pins / ('prog_' + name)}: {exc}",
                    "the vethguard agent has not started on this node yet",
                ) from exc
        # the endpoint first: the programs find it PENDING from their first packet
        write_pending_endpoint(pins, ifindex, ipv4, ipv6)
        try:
            state_dir = str(req.config.get("stateDir") or ledger.DEFAULT_STATE_DIR)
            mode = attach_mode(_tc_attach(req.config))
            attacher = pod_attacher(pins, ledger.ledger_path(state_dir, pins.name), mode)
            attacher.attach_programs(ifindex, fds)
        except VethguardError as exc:
            raise CniError(ERR_ATTACH, f"cannot attach the vethguard programs: {exc}") from exc
    finally:
        for fd in fds.values():
            os.close(fd)
    return dict(req.config.get("prevResult") or {}, cniVersion=req.version)


def _tc_attach(config: Mapping[str, Any]) -> str | None:
    value = config.get("tcAttach")
    if value is not None and not isinstance(value, str):
        raise CniError(ERR_INVALID_CONFIG, f"tcAttach must be a string (tcx or clsact), not {value!r}")
    return value or None


def write_pending_endpoint(pins: Path, ifindex: int, ipv4: str | None, ipv6: str | None) -> None:
    """PENDING endpoint entry unless one exists (the agent's); the addresses in vg_local."""
    endpoints = bpfsys.BpfMap.open_pinned(str(pins / "vg_endpoints"))
    try:
        key, value = codecs.encode_endpoint(ifindex, 0, abi.EP_F_PENDING, ipv4, ipv6)
        try:
            endpoints.update(key, value, bpfsys.BPF_NOEXIST)
        except bpfsys.BpfError as exc:
            if exc.errno != 17:  # EEXIST: the agent was faster, its entry stands
                raise CniError(ERR_ATTACH, f"cannot write the endpoint entry: {exc}") from exc
    finally:
        endpoints.close()
    local = bpfsys.BpfMap.open_pinned(str(pins / "vg_local"))
    try:
        for address in (ipv4, ipv6):
            if address:
                local.update(*codecs.encode_local(address, ifindex))
    finally:
        local.close()


def check(req: Request) -> None:
    ifindex = host_interface(req.config, req.ifname)
    try:
        mode = attach_mode(_tc_attach(req.config))
    except VethguardError as exc:
        raise CniError(ERR_INVALID_CONFIG, str(exc)) from exc
    if not pod_attacher(None, mode=mode).attached(ifindex):
        raise CniError(ERR_ATTACH, f"the vethguard programs are missing on ifindex {ifindex}")


def handle(env: Mapping[str, str], stdin: str) -> dict[str, Any] | None:
    """Run one CNI command; the result to print (None: nothing)."""
    req = parse(env, stdin)
    if req.command == "VERSION":
        return {"cniVersion": req.version, "supportedVersions": list(SUPPORTED_VERSIONS)}
    if req.command == "ADD":
        return add(req)
    if req.command == "CHECK":
        check(req)
    return None  # DEL, GC, STATUS: nothing of ours to undo or report


def main() -> int:
    stdin = sys.stdin.read()
    try:
        result = handle(os.environ, stdin)
    except CniError as exc:
        err = {"cniVersion": _version_of(stdin), "code": exc.code, "msg": exc.msg}
        if exc.details:
            err["details"] = exc.details
        print(json.dumps(err))
        return 1
    except Exception as exc:  # anything else is an error result too: never a half-open pod
        error = {"cniVersion": _version_of(stdin), "code": ERR_ATTACH, "msg": f"vethguard-cni: {exc}"}
        print(json.dumps(error))
        return 1
    if result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
