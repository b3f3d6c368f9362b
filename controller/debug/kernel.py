"""Read a node's pinned maps with bpf(2), without compiling anything: dumps for `vethguard bpf`
and the live verdict lookup `explain` cross-checks against.

The live lookup repeats the tc programs' new-flow decision (bpf/lib/newflow.h, lib/policy.h)
with the kernel doing the longest-prefix matches: a BPF_MAP_LOOKUP_ELEM on an LPM trie with a
full-length key returns the longest matching entry, the same lookup the program makes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.compiler.desired_state import PolicyEntryValue
from controller.core.errors import VethguardError
from controller.core.identities import ID_HOST, ID_WORLD
from controller.core.net import L4_PROTOCOLS
from controller.core.verdicts import DIR_INGRESS
from controller.datapath import abi, bpfsys, codecs, readback
from controller.datapath.dns_table import LearnedTable
from controller.datapath.readback import KernelState
from controller.debug import hostep_model, verdict_model
from controller.debug.hostep import decode_failsafe, decode_hosteps
from controller.debug.hostep_model import HepFlags

READ_MAPS = ("vg_endpoints", "vg_ipcache4", "vg_ipcache6", "vg_policy", "vg_ct", "vg_config", "vg_counters")
# Read when pinned (an agent older than host endpoints or the established fast path has none):
# host endpoints and what their decision reads besides vg_policy (bpf/lib/hostep.h), the fast
# path's counts, and what pods learned from DNS (an agent older than domainNames has none)
OPTIONAL_MAPS = (
    "vg_hosteps",
    "vg_failsafe",
    "vg_svc",
    "vg_local",
    "vg_est_counters",
    "vg_dns_learned",
    "vg_dns_names",
)


@dataclass(frozen=True)
class LiveHalf:
    """The kernel maps' answer for one hook of a new flow."""

    allowed: bool
    reason: str  # a name of abi.Reason
    rule_ref: int = 0
    peer_identity: int = ID_WORLD
    peer_cidr_identity: int = 0
    ep_id: int | None = None
    passed: tuple[int, ...] = ()  # rule references of the tiers' Pass rules that handed it on
    peer_domain_identity: int = 0  # egress: the domain the endpoint learned the peer address under


class _NoMap:
    """An empty map, for a node whose agent pinned no vg_dns_learned."""

    def lookup(self, key: bytes) -> bytes | None:
        return None

    def items(self) -> dict[bytes, bytes]:
        return {}


class NodeMaps:
    """The pinned maps of one node, opened read-only in spirit (nothing here writes)."""

    def __init__(self, pin_dir: Path, maps: Mapping[str, Any] | None = None) -> None:
        """Open the maps pinned in pin_dir, or use `maps` (name -> an object with the BpfMap
        methods used here: items, lookup, close; tests pass fakes)."""
        self.pin_dir = pin_dir
        self.maps: dict[str, Any] = dict(maps or {})
        if maps is not None:
            return
        try:
            for name in READ_MAPS:
                self.maps[name] = bpfsys.BpfMap.open_pinned(str(pin_dir / name))
            for name in OPTIONAL_MAPS:
                with contextlib.suppress(OSError):
                    self.maps[name] = bpfsys.BpfMap.open_pinned(str(pin_dir / name))
        except OSError as exc:
            self.close()
            raise VethguardError(
                f"cannot open the pinned maps in {pin_dir} ({exc}); is the agent running on this node "
                "and is this the right --pin-root/--node? (needs root)"
            ) from exc

    def close(self) -> None:
        for m in self.maps.values():
            with contextlib.suppress(OSError):
                m.close()
        self.maps.clear()

    def __enter__(self) -> NodeMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- dumps
    def dump(self) -> KernelState:
        return readback.dump(self.maps)

    def counters(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        return readback.counters(self.maps)

    def endpoints(self) -> list[codecs.Endpoint]:
        return [codecs.decode_endpoint(k, v) for k, v in self.maps["vg_endpoints"].items().items()]

    def endpoint_by_ip(self, ip: str) -> codecs.Endpoint | None:
        addr = str(ipaddress.ip_address(ip))
        for ep in self.endpoints():
            if addr in (ep.ipv4, ep.ipv6):
                return ep
        return None

    def learned(self) -> LearnedTable:
        """vg_dns_learned with its names (empty when the map is not pinned)."""
        m = self.maps.get("vg_dns_learned")
        return LearnedTable(m if m is not None else _NoMap(), self.maps.get("vg_dns_names"))

    # -- live lookups
    def ipcache(self, addr: str) -> tuple[int, int, int]:
        """(identity, cidr_identity, ns_identity) of an address: the trie's longest match."""
        a = ipaddress.ip_address(addr)
        net = ipaddress.ip_network(f"{a}/{a.max_prefixlen}")
        kb, _ = codecs.encode_ipcache(net, 0, 0)
        raw = self.maps["vg_ipcache4" if a.version == 4 else "vg_ipcache6"].lookup(kb)
        if raw is None:
            return (ID_WORLD, 0, 0)
        v = abi.IpcacheValue.from_bytes(raw)
        return (int(v.identity), int(v.cidr_identity), int(v.ns_identity))

    def policy(
        self, ep_id: int, direction: int, identity: int, proto: int, port: int
    ) -> PolicyEntryValue | None:
        """The longest vg_policy match for a full key (what the tc program's lookup returns)."""
        k = abi.PolicyKey(
            prefixlen=abi.POLICY_PLEN_FULL, ep_id=ep_id, identity=identity, dir=direction, proto=proto
        )
        # lib/parse.h vg_policy_port: ICMP and ICMPv6 look up port 0.
        k.dport = codecs.be16(0 if proto in (1, 58) else port)
        raw = self.maps["vg_policy"].lookup(bytes(k))
        return None if raw is None else codecs.decode_policy(bytes(k), raw)[2]

    def verdict(
        self, ep: codecs.Endpoint, direction: int, peer: str, proto: int, port: int, now_ns: int | None = None
    ) -> LiveHalf:
        """lib/newflow.h's HOST check and lib/policy.h vg_policy_verdict on the live maps: the
        kernel answers each LPM lookup, verdict_model.decide (the model's own code) merges them.
        An egress peer the endpoint learned from DNS (lib/dnslearned.h: EP_F_DNS, not expired at
        `now_ns`, default now) adds its domain identity."""
        ident, cidr, ns_ident = self.ipcache(peer)
        fqdn = 0
        if direction != DIR_INGRESS and ep.flags & abi.EP_F_DNS:
            hit = self.learned().lookup(ep.ep_id, peer)
            now = time.monotonic_ns() if now_ns is None else now_ns
            fqdn = hit.identity if hit is not None and hit.expires_ns > now else 0

        def lookup_in(ep_id: int) -> verdict_model.PolicyLookup:
            """LPM lookups in the entries keyed by `ep_id`: the endpoint's own, or its tier profile's."""

            def lookup(level: int) -> tuple[None, PolicyEntryValue] | None:
                v = self.policy(ep_id, direction, level, proto, port)
                return None if v is None else (None, v)

            return lookup

        ingress = direction == DIR_INGRESS
        # lib/newflow.h: the node's own traffic is decided before the endpoint's policy, so a
        # pending endpoint (never tiered) passes it like any other (decide's HOST step)
        if ep.flags & abi.EP_F_PENDING and ident != ID_HOST:
            d = verdict_model.Decision(False, abi.Reason.DROP_PENDING.name)
        else:
            d = verdict_model.decide(
                direction,
                ident,
                cidr,
                bool(ep.flags & (abi.EP_F_INGRESS_ISOLATED if ingress else abi.EP_F_EGRESS_ISOLATED)),
                bool(ep.flags & (abi.EP_F_INGRESS_TIERED if ingress else abi.EP_F_EGRESS_TIERED)),
                bool(ep.flags & (abi.EP_F_INGRESS_AUDIT if ingress else abi.EP_F_EGRESS_AUDIT)),
                lookup_in(ep.ep_id),
                lookup_in(ep.tier_profile),
                bool(ep.flags & (abi.EP_F_INGRESS_CALICO if ingress else abi.EP_F_EGRESS_CALICO)),
                ns_ident,
                fqdn,
            )
        return LiveHalf(d.allowed, d.reason, d.rule_ref, ident, cidr, ep.ep_id, d.passed, fqdn)

    # -- host endpoints
    def hosteps(self) -> dict[int, HepFlags]:
        """vg_hosteps: ifindex -> entry (empty when the map is not pinned)."""
        m = self.maps.get("vg_hosteps")
        return {} if m is None else decode_hosteps(m.items())

    def failsafe(self) -> list[tuple[int, int, int]]:
        """vg_failsafe: (direction, protocol, port)."""
        m = self.maps.get("vg_failsafe")
        return [] if m is None else decode_failsafe(m.items())

    def _get(self, name: str, key: bytes) -> bytes | None:
        m = self.maps.get(name)
        if m is None:
            raise VethguardError(f"{self.pin_dir}/{name} is not pinned: an agent without host endpoints?")
        raw = m.lookup(key)
        return None if raw is None else bytes(raw)

    def _has(self, name: str, key: bytes) -> bool:
        return self._get(name, key) is not None

    def _node_address(self, addr: str) -> bool:
        """lib/trust.h vg_local_lookup: an address of the node itself (ifindex 0, not a pod's)."""
        raw = self._get("vg_local", codecs.encode_local(addr, 0)[0])
        return raw is not None and codecs.decode_local(codecs.encode_local(addr, 0)[0], raw)[1] == 0

    def hep_verdict(
        self, ifindex: int, direction: int, src: str, dst: str, proto: int, port: int
    ) -> LiveHalf:
        """bpf/lib/hostep.h vg_hep_verdict and vg_hep_handle's failsafe check on the live maps
        for a new flow through interface `ifindex`: the kernel answers each lookup,
        hostep_model.decide (the model's own code) merges them. Leaving traffic is taken for the
        node's own when its source is an address of the node (the kernel reads skb->sk)."""
        hep = self.hosteps().get(ifindex)
        if hep is None:
            raise VethguardError(f"no vg_hosteps entry for ifindex {ifindex} in {self.pin_dir}")
        ingress = direction == DIR_INGRESS
        # (a host endpoint's profiles are Calico's, which have no namespace keys: the kernel's
        # lookup of the namespace identity never answers there)
        ident, cidr, _ = self.ipcache(src if ingress else dst)
        fam = ipaddress.ip_address(dst).version
        failsafe_key = abi.FailsafeKey(proto=proto, dir=direction)
        failsafe_key.port = codecs.be16(port)
        failsafe = proto in L4_PROTOCOLS.values() and self._has("vg_failsafe", bytes(failsafe_key))
        if ingress:
            local = self._node_address(dst)
            local = local and not self._has("vg_svc", codecs.encode_svc(fam, dst, proto, port)[0])
        else:
            local = self._node_address(src)
        lport = verdict_model.policy_port(proto, port)

        def lookup(profile: int, level: int) -> tuple[None, PolicyEntryValue] | None:
            k = abi.PolicyKey(
                prefixlen=abi.POLICY_PLEN_FULL, ep_id=profile, identity=level, dir=direction, proto=proto
            )
            k.dport = codecs.be16(lport)
            raw = self.maps["vg_policy"].lookup(bytes(k))
            return None if raw is None else (None, codecs.decode_policy(bytes(k), raw)[2])

        d = hostep_model.decide(direction, hep, ident, cidr, local, failsafe, lookup)
        return LiveHalf(d.allowed, d.reason, d.rule_ref, ident, cidr, ifindex)
