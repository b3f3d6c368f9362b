"""The iptables+ipset peer: NetworkPolicy rendered the way kube-router renders it (IPv4).

Layout (kube-router's network policy controller, simplified to what a verdict needs):

  FORWARD          -j KUBE-ROUTER-FORWARD
  KUBE-ROUTER-FORWARD   per local pod selected by a policy: -d POD -j KUBE-POD-FW-<h> (ingress)
                                                            -s POD -j KUBE-POD-FW-<h> (egress)
                        -m mark --mark 0x20000/0x20000 -j ACCEPT
  KUBE-POD-FW-<h>  ctstate RELATED,ESTABLISHED -j ACCEPT; ctstate INVALID -j DROP;
                   -d POD -m addrtype --src-type LOCAL -j ACCEPT   (the node may always talk to it)
                   -d POD -j KUBE-NWPLCY-<p>  for every ingress policy selecting the pod, then
                   -s POD -j KUBE-NWPLCY-<p>  for every egress policy
                   -m mark ! --mark 0x10000/0x10000 -j REJECT; -j MARK 0x20000 (accepted)
  KUBE-NWPLCY-<p>  per rule and port: [-m set --match-set KUBE-SRC-<r> src] -m set --match-set
                   KUBE-DST-<p> dst [-p tcp --dport N[:M]] -j MARK --set-xmark 0x10000/0x10000
                   followed by the same match with -m mark --mark 0x10000/0x10000 -j RETURN

ipsets: KUBE-DST-<p> (hash:ip) holds the policy's selected pods; KUBE-SRC-<r> (hash:ip) the pods
a rule's selector peers select (resolved with vethguard's own selector code, so both engines see
the same pod sets); ipBlock peers become hash:net sets with `nomatch` excepts, as kube-router
does. Named ports resolve on the local destination pod (ingress); rules whose ports are named
on the egress side are not rendered (the benchmark policies never use them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from controller.compiler.model import ClusterState, NetworkPolicy, Peer, Pod, Rule
from controller.compiler.policy import CompiledCluster, compile_cluster

MARK_MATCHED = "0x10000/0x10000"
MARK_ACCEPT = "0x20000/0x20000"


def _h(text: str, salt: str) -> str:
    """16 hex digits naming a chain or set; the salt keeps several rule sets apart in one namespace."""
    return hashlib.sha256(f"{salt}|{text}".encode()).hexdigest()[:16].upper()


@dataclass
class Ruleset:
    ipsets: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # name -> (type, members)
    chains: dict[str, list[str]] = field(default_factory=dict)  # chain -> rule specs (no -A CHAIN)

    @property
    def rule_count(self) -> int:
        return sum(len(r) for r in self.chains.values())

    @property
    def ipset_members(self) -> int:
        return sum(len(m) for _, m in self.ipsets.values())

    def ipset_restore(self) -> str:
        lines = []
        for name, (kind, members) in self.ipsets.items():
            maxelem = max(65536, 1 << max(1, len(members)).bit_length())
            lines.append(f"create {name} {kind} family inet hashsize 1024 maxelem {maxelem}")
            lines += [f"add {name} {m}" for m in members]
        return "\n".join(lines) + "\n"

    def iptables_restore(self) -> str:
        """A full filter table: replaces whatever the (lab node) namespace's filter table held."""
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        lines += [f":{chain} - [0:0]" for chain in self.chains]
        lines.append("-A FORWARD -m comment --comment kube-router-netpol -j KUBE-ROUTER-FORWARD")
        for chain, rules in self.chains.items():
            lines += [f"-A {chain} {r}" for r in rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def _ports(rule: Rule, dest: Pod | None) -> list[str]:
    """iptables port matches of a rule ("" = any protocol/port); named ports need `dest`."""
    if not rule.ports:
        return [""]
    out = []
    for p in rule.ports:
        proto = p.protocol.lower()
        if p.port is None:
            out.append(f"-p {proto}")
        elif isinstance(p.port, str):
            numbers = dest.resolve_named_port(p.port, p.protocol) if dest is not None else ()
            out += [f"-p {proto} -m {proto} --dport {n}" for n in numbers]
        elif p.end_port is not None:
            out.append(f"-p {proto} -m {proto} --dport {p.port}:{p.end_port}")
        else:
            out.append(f"-p {proto} -m {proto} --dport {p.port}")
    return out


class _Builder:
    def __init__(self, cluster: ClusterState, node: str, salt: str) -> None:
        self.cluster = cluster
        self.salt = salt
        self.compiled: CompiledCluster = compile_cluster(cluster)
        self.node = node
        self.rs = Ruleset()
        self.rs.chains["KUBE-ROUTER-FORWARD"] = []

    def pods_of(self, identities: frozenset[int] | set[int]) -> list[Pod]:
        c = self.compiled
        return sorted(
            (p for i in identities for p in c.pods_by_identity.get(i, []) if p.ipv4), key=lambda p: p.key
        )

    def peer_set(self, pol: NetworkPolicy, rule_id: str, peers: tuple[Peer, ...]) -> list[str]:
        """ipset names matching a rule's peers (one hash:ip for selectors, one hash:net per ipBlock)."""
        sets = []
        selector_ids: set[int] = set()
        for n, peer in enumerate(peers):
            if peer.ip_block is not None:
                block = peer.ip_block
                if block.cidr.version != 4:
                    continue
                name = f"KUBE-SRC-{_h(f'{rule_id}/{n}', self.salt)}"
                members = [str(block.cidr)] + [f"{e} nomatch" for e in block.excepts if e.version == 4]
                self.rs.ipsets[name] = ("hash:net", members)
                sets.append(name)
            else:
                selector_ids |= self.compiled.peer_identities(pol.namespace, peer)
        if selector_ids or not sets:
            name = f"KUBE-SRC-{_h(rule_id, self.salt)}"
            self.rs.ipsets[name] = ("hash:ip", [p.ipv4 for p in self.pods_of(selector_ids) if p.ipv4])
            sets.append(name)
        return sets

    def policy_chain(self, pol: NetworkPolicy, ingress: bool, local: list[Pod]) -> str:
        direction = "ingress" if ingress else "egress"
        chain = f"KUBE-NWPLCY-{_h(f'{pol.key}/{direction}', self.salt)}"
        if chain in self.rs.chains:
            return chain
        dst_set = f"KUBE-DST-{_h(f'{pol.key}/{direction}', self.salt)}"
        self.rs.ipsets[dst_set] = ("hash:ip", [p.ipv4 for p in local if p.ipv4])
        own = "dst" if ingress else "src"
        peer_side = "src" if ingress else "dst"
        rules: list[str] = []
        for rule in pol.ingress if ingress else pol.egress:
            rule_id = f"{pol.key}/{direction}/{rule.index}"
            peer_sets = self.peer_set(pol, rule_id, rule.peers) if rule.peers else [""]
            dest = local[0] if ingress and local else None
            for ps in peer_sets:
                peer_match = f"-m set --match-set {ps} {peer_side} " if ps else ""
                for port in _ports(rule, dest):
                    match = f"{peer_match}-m set --match-set {dst_set} {own} {port}".strip()
                    rules.append(f"{match} -j MARK --set-xmark {MARK_MATCHED}")
                    rules.append(f"{match} -m mark --mark {MARK_MATCHED} -j RETURN")
        self.rs.chains[chain] = rules
        return chain

    def pod_chain(self, pod: Pod, ingress: list[NetworkPolicy], egress: list[NetworkPolicy]) -> None:
        chain = f"KUBE-POD-FW-{_h(pod.key, self.salt)}"
        ip = pod.ipv4
        rules = [
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-m conntrack --ctstate INVALID -j DROP",
            f"-d {ip} -m addrtype --src-type LOCAL -j ACCEPT",
        ]
        rules += [f"-d {ip} -j {self.policy_chain(p, True, self.local_selected(p))}" for p in ingress]
        rules += [f"-s {ip} -j {self.policy_chain(p, False, self.local_selected(p))}" for p in egress]
        rules += [f"-m mark ! --mark {MARK_MATCHED} -j REJECT", f"-j MARK --set-xmark {MARK_ACCEPT}"]
        self.rs.chains[chain] = rules
        fwd = self.rs.chains["KUBE-ROUTER-FORWARD"]
        if ingress:
            fwd.append(f"-d {ip} -j {chain}")
        if egress:
            fwd.append(f"-s {ip} -j {chain}")

    def local_selected(self, pol: NetworkPolicy) -> list[Pod]:
        return [
            p for p in self.pods_of(self.compiled.selected.get(pol.key, frozenset())) if p.node == self.node
        ]

    def build(self) -> Ruleset:
        by_pod: dict[str, tuple[list[NetworkPolicy], list[NetworkPolicy]]] = {}
        pods = {p.key: p for p in self.cluster.pods.values()}
        for pol in self.compiled.policies:  # sorted by key, as the compiler orders them
            for pod in self.local_selected(pol):
                ing, egr = by_pod.setdefault(pod.key, ([], []))
                if pol.isolates_ingress:
                    ing.append(pol)
                if pol.isolates_egress:
                    egr.append(pol)
        for key in sorted(by_pod):
            self.pod_chain(pods[key], *by_pod[key])
        self.rs.chains["KUBE-ROUTER-FORWARD"].append(f"-m mark --mark {MARK_ACCEPT} -j ACCEPT")
        return self.rs


def build_ruleset(cluster: ClusterState, node: str, salt: str = "") -> Ruleset:
    """kube-router-style filter table and ipsets enforcing `cluster`'s policies for `node`'s pods."""
    return _Builder(cluster, node, salt).build()
