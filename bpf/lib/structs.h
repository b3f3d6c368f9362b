/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map key/value layouts shared by the tc programs and user space.
 *
 * This file is the single source of the layouts in docs/INTERNALS.md. It must stay includable
 * by a plain user-space C compiler (tests/unit/test_map_layout.py compiles it with gcc and
 * compares sizeof/offsetof with the ctypes mirrors in controller/datapath/maps.py), so it only
 * uses fixed-width UAPI types and no BPF-only constructs.
 */
#ifndef VG_STRUCTS_H
#define VG_STRUCTS_H

#include <linux/types.h>

/* Directions, as seen from the pod. */
#define DIR_INGRESS 0 /* to the pod: tc egress on the host-side veth */
#define DIR_EGRESS  1 /* from the pod: tc ingress on the host-side veth */

/* Reserved identities. */
#define ID_ANY         0
#define ID_HOST        1
#define ID_WORLD       2
#define ID_REMOTE_NODE 3
/* Namespace identities (ipcache_value.ns_identity, and the peer of a ClusterNetworkPolicy key
 * that selects every pod of a namespace); pod identities lie below CIDR ones, CIDR ones below. */
#define NS_ID_MIN      (1 << 25)
#define NS_ID_MAX      ((1 << 26) - 1)

#define EP_F_INGRESS_ISOLATED (1 << 0)
#define EP_F_EGRESS_ISOLATED  (1 << 1)
#define EP_F_AUDIT            (1 << 2) /* reserved: log would-be drops, let them pass */
#define EP_F_PENDING          (1 << 3) /* policy not yet realized: drop all but always-allowed */
/* The direction is isolated only by audit-mode policies: would-be policy drops pass (ALLOW_AUDIT). */
#define EP_F_INGRESS_AUDIT    (1 << 4)
#define EP_F_EGRESS_AUDIT     (1 << 5)
/* A ClusterNetworkPolicy with rules in that direction selects the pod: its new flows are decided
 * by the tiers (Admin -> NetworkPolicy -> Baseline), lib/policy.h. */
#define EP_F_INGRESS_TIERED   (1 << 6)
#define EP_F_EGRESS_TIERED    (1 << 7)
/* A Calico policy selects the pod for that direction: Calico's tier decides after the Admin
 * tier, with NetworkPolicy inside it; nothing matching there is a drop (end of tier). Always set
 * with the direction's TIERED flag. */
#define EP_F_INGRESS_CALICO   (1 << 8)
#define EP_F_EGRESS_CALICO    (1 << 9)
/* Its tier profile has Calico Log rules: a new flow they match is reported (LOG_CALICO). */
#define EP_F_CALICO_LOG       (1 << 10)
/* A ClusterNetworkPolicy rule with domainNames peers polices the pod's egress: its DNS queries are
 * copied to the agent and its DNS answers held until the agent has learned their addresses
 * (lib/dns.h). */
#define EP_F_DNS              (1 << 11)

#define VERDICT_ALLOW 1 /* policy_value.verdict: a NetworkPolicy rule allows it */
#define VERDICT_DENY  2 /* reserved */

/* policy_value.admin / .baseline: the action of the tier's first matching rule. */
#define TIER_NONE   0 /* no rule of the tier matches */
#define TIER_ACCEPT 1
#define TIER_DENY   2
#define TIER_PASS   3 /* skip the rest of the tier */

#define CT_ALLOWED  1
#define CT_DENIED   2 /* revoked tombstone */
/* A pod's flow to a Service frontend, seen before kube-proxy's DNAT: its verdict is given after
 * DNAT by the judge (to_pod of a local backend, or to_uplink), on a ct_key with nat = 1. The
 * entry only lets the flow's replies (from the frontend address) back into the pod. */
#define CT_DEFERRED 3

/* skb->mark bits set by from_pod on a packet whose egress verdict is deferred past DNAT. The
 * upper half of the mark: kube-proxy uses 0x4000/0x8000, flannel and kindnet none. */
#define VG_MARK_DEFERRED   0x80000000U
#define VG_MARK_SLOT_MASK  0x7fff0000U
#define VG_MARK_SLOT_SHIFT 16
#define VG_MARK_MASK       (VG_MARK_DEFERRED | VG_MARK_SLOT_MASK)
/* A DNS answer the agent held and now releases into the pod (lib/dns.h): every slot bit without
 * the deferred bit, which no deferred mark has. Only the node's root can set a mark; a packet
 * crossing into the node from a pod or another namespace has it cleared. */
#define VG_MARK_DNS_RELEASED VG_MARK_SLOT_MASK

/*
 * vg_tail (maps.h, a prog array): the programs to_pod reaches by tail call, by slot. A deferred
 * packet's judge is a program of its own so that to_pod's verification fits the verifier's
 * 1M-instruction budget (vethguard.c). The slots and the cb word are an ABI between builds: during
 * an upgrade a to_pod of the previous build, still attached, calls this build's judge.
 */
#define VG_TAIL_JUDGE  0 /* to_pod_judge: the judge of a deferred packet entering a pod */
#define VG_TAIL_TO_POD 1 /* to_pod_judged: to_pod's own decision, after the judge passed it */
#define VG_TAIL_SLOTS  2
#define VG_CB_CLIENT   0 /* skb->cb[] word: the client's ep_id, from the judge to to_pod_judged */

/* ct_value.origin of a flow masqueraded to a node address by the node for a sender outside it. */
#define CT_ORIGIN_OUTSIDE 0xffff

#define CT_SEEN_REPLY 1
#define CT_SEEN_FIN   2
#define CT_SEEN_RST   4
/* Created by a TCP packet other than a SYN (the entry was lost: evicted, expired, or the flow
 * predates the program): who opened the connection is unknown, so packets in the other direction
 * are not replies until that direction's own policy allows them (CT_SEEN_REPLY_OK). */
#define CT_SEEN_MIDSTREAM 8
#define CT_SEEN_REPLY_OK  16 /* MIDSTREAM entry: reply direction allowed at `revision` */
/* Leaving the pod, this flow's packets passed the source check (the pod's own address) at
 * `revision`: set when the egress entry is created and by the full path, cleared when the revision
 * changes. The established fast path (vg_ct_fast) needs it, as it skips the endpoint lookup. */
#define CT_SEEN_SRC_OWN   32

/* LPM prefix lengths of the policy key, counted over the bytes after `prefixlen`. */
#define POLICY_PLEN_ANY_PROTO 72 /* ep_id + identity + dir */
#define POLICY_PLEN_ANY_PORT  80 /* ... + proto */
#define POLICY_PLEN_FULL      96 /* ... + 16-bit dport */

/* vg_endpoints: __u32 ifindex -> endpoint_info */
struct endpoint_info {
	__u32 ep_id;    /* == host-side veth ifindex */
	__u32 identity; /* the pod's identity */
	__u32 flags;    /* EP_F_* */
	__be32 ipv4;    /* pod IPv4 (0 if none) */
	__u8 ipv6[16];  /* pod IPv6 (zero if none) */
	__u32 slot;     /* 1..32767, this endpoint in skb->mark (vg_slots); 0 = none */
	__u32 tier_profile; /* TIERED: the policy_key.ep_id of its ClusterNetworkPolicy entries */
};

/*
 * The ClusterNetworkPolicy entries of every endpoint selected by the same policies (with the same
 * named-port resolution) are one set, a tier profile, keyed in vg_policy by a pseudo endpoint id
 * with this bit set (ifindexes never have it): a cluster-wide policy costs its entries once per
 * node, not once per endpoint it selects.
 */
#define TIER_PROFILE_BIT 0x80000000U

/*
 * vg_hosteps: __u32 ifindex of a node interface -> hostep_info. A Calico HostEndpoint on that
 * interface (lib/hostep.h): traffic arriving is judged by its preDNAT policies (original
 * destination), then, to the node itself, by its normal policies (none selecting it: denied, as
 * Calico does), forwarded, by its applyOnForward policies (none: allowed); traffic leaving the
 * node likewise. Each policy set is a tier profile in vg_policy (its Calico slot). Failsafe ports
 * (vg_failsafe) and replies of tracked flows always pass.
 */
struct hostep_info {
	__u32 flags;        /* HEP_F_* */
	__u32 profile_host; /* tier profile of the policies judging traffic to and from the node */
	__u32 profile_fwd;  /* of the applyOnForward ones (forwarded traffic) */
	__u32 profile_pre;  /* of the preDNAT ones (arrivals, before kube-proxy's DNAT) */
};
#define HEP_F_INGRESS_FWD (1 << 0) /* applyOnForward policies select it for ingress */
#define HEP_F_EGRESS_FWD  (1 << 1) /* ... for egress */
#define HEP_F_PREDNAT     (1 << 2) /* preDNAT policies select it */

/* vg_failsafe: ports that always pass a host endpoint (Calico's failsafe ports) -> 1 */
struct failsafe_key {
	__be16 port;
	__u8 proto;
	__u8 dir; /* DIR_INGRESS: to the node (its destination port); DIR_EGRESS: from it */
};

/* vg_slots: __u32 slot -> __u32 ep_id. A mark has 15 bits for the client of a deferred packet;
 * an ifindex does not fit, so the agent gives each endpoint a small stable slot. */

/* vg_svc: Service frontends kube-proxy DNATs on this node (ClusterIPs, external IPs, this
 * node's addresses with a NodePort). A pod's new flow to one is judged after DNAT. */
struct svc_key {
	__u8 addr[16]; /* IPv4 in the first 4 bytes, rest zero */
	__be16 port;
	__u8 proto;
	__u8 family; /* 4 or 6 */
};

struct svc_value {
	__u32 flags; /* reserved */
};

/* vg_local: the addresses that belong to this node (its Node addresses) and to its pods. Such an
 * address is believed only where it belongs (lib/trust.h): a local pod's only on its own veth,
 * the node's only on packets the node itself sends. */
struct local_key {
	__u8 addr[16]; /* IPv4 in the first 4 bytes, rest zero */
	__u8 family;   /* 4 or 6 */
	__u8 pad[3];
};

struct local_value {
	__u32 ifindex; /* host-side veth of the local pod; 0: an address of the node */
};

/* vg_ipcache4 / vg_ipcache6 (LPM tries) */
struct ipcache4_key {
	__u32 prefixlen;
	__be32 addr;
};

struct ipcache6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;      /* pod identity, HOST, REMOTE_NODE or WORLD */
	__u32 cidr_identity; /* longest policy prefix containing the address, 0 if none */
	__u32 ns_identity;   /* a pod address: its namespace's identity; 0 for any other address */
};

/* vg_policy (LPM trie) */
struct policy_key {
	__u32 prefixlen; /* 72 any proto/port, 80 proto any port, 80+n port prefix /n */
	__u32 ep_id;
	__u32 identity; /* peer identity, 0 = any peer */
	__u8 dir;       /* DIR_* */
	__u8 proto;     /* IPPROTO_* */
	__be16 dport;   /* network order so the prefix covers the high bits first */
};

/*
 * One entry answers for all three tiers at once: what NetworkPolicy says, and which rule of each
 * ClusterNetworkPolicy tier matches first. The compiler folds into every entry the rules of the
 * shorter prefixes (same endpoint, direction and peer identity) that cover it, so the longest
 * match alone is complete for its identity; the program combines its lookups (peer identity,
 * CIDR identity, a tier profile's namespace identity, ANY) by taking each tier's lowest rank
 * (lib/policy.h).
 */
struct policy_value {
	__u8 verdict;       /* VERDICT_ALLOW: a NetworkPolicy rule allows it; 0: none does */
	__u8 admin;         /* TIER_*: the first matching Admin-tier rule's action */
	__u8 baseline;      /* TIER_*: the first matching Baseline-tier rule's action */
	__u8 flags;         /* reserved */
	__u32 rule_ref;     /* the NetworkPolicy rule (when verdict) */
	__u32 admin_rank;   /* that Admin rule's place in the tier's order: lower decides */
	__u32 admin_ref;    /* and its reference (events name it) */
	__u32 baseline_rank;
	__u32 baseline_ref;
	__u8 calico;        /* TIER_*: the first matching rule of Calico's tier (NetworkPolicies in it) */
	__u8 log;           /* 1: a Calico Log rule matches: the lowest-ranked one is log_rank/log_ref */
	__u8 pad[2];
	__u32 calico_rank;
	__u32 calico_ref;
	__u32 log_rank;
	__u32 log_ref;
};

/* vg_ct (LRU hash) */
struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport; /* ICMP echo: the identifier in both */
	__be16 dport;
	__u32 ep_id;
	__u8 proto;
	__u8 dir; /* the hook direction where the flow was first seen */
	__u8 family; /* 4 or 6 */
	__u8 nat;    /* 1: an egress entry judged after DNAT (the judge's), 0 otherwise */
};

struct ct_value {
	__u64 expires_ns; /* vg_now() deadline: CLOCK_MONOTONIC, tick resolution */
	__u64 packets;
	__u64 bytes;
	__u32 revision; /* config revision the verdict was computed at */
	__u32 rule_ref;
	__u8 state; /* CT_ALLOWED / CT_DENIED / CT_DEFERRED */
	__u8 seen;  /* CT_SEEN_* */
	__u16 origin; /* ingress flow whose source is a node address forwarded for someone else
		       * (masquerade): the slot of the local pod that really sent it, or
		       * CT_ORIGIN_OUTSIDE; 0 for every other flow (lib/trust.h) */
	__u16 marker; /* VG_UPGRADE_MARKER of the program that created the entry (0 in normal
		       * builds): lets upgrade tests tell flows of the old and new program apart */
	__u16 slot;   /* the endpoint's slot (vg_est_counters' row), set by the full path;
		       * 0 (also in an entry of a program before it: the upper half of a 32-bit
		       * marker that was 0 or 2) = not known yet, no fast path */
};

/* vg_frag (LRU hash): ports of a fragmented datagram, recorded from its first fragment. */
struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id; /* IPv4 id (16 bits, host order) or IPv6 fragment id */
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct frag_value {
	__be16 sport;
	__be16 dport;
	__u32 pad;
	__u64 expires_ns;
};

/* vg_config (array[1]) */
struct config {
	__u32 revision; /* bumped by every sync that changed a map */
	__u32 flags;
	__u64 reserved;
};

/* vg_dns_state (array[1]): written by the agent's DNS thread only (never by a sync, so neither
 * overwrites the other's field). */
struct dns_state {
	__u64 hold_until_ns; /* vg_now() deadline the agent pushes forward every second while it
			      * releases held DNS answers: past it, answers pass unheld */
	__u64 reserved;
};

/* vg_dns_learned (LRU hash): an address a pod's DNS answers gave it for domainNames rules. */
struct dns_learned_key {
	__u32 ep_id;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct dns_learned_value {
	__u64 expires_ns; /* vg_now() deadline for new flows (the answer's TTL, at least the hold
			   * minimum); an established flow is re-checked with it even when expired */
	__u32 identity;   /* the domain identity: its domainNames rules are keyed by it in the tier
			   * profile (one per class of names that match the same patterns) */
	__u32 name_id;    /* the name the pod asked for, in vg_dns_names (0: not recorded). Only
			   * the debug views read it; the programs never do */
};

/* vg_dns_names (LRU hash, name_id -> name): the names behind vg_dns_learned's entries, written
 * by the agent for `bpf dns`, explain and observe. No program reads it. */
#define VG_DNS_NAME_MAX 256 /* a DNS name's 253 characters and a NUL, rounded */
struct dns_name {
	char name[VG_DNS_NAME_MAX];
};

/* vg_dns_held (ring buffer): a DNS packet for the agent, the frame from its Ethernet header. */
#define VG_DNS_HELD_MAX 4096 /* a power of two; longer frames pass unheld */
#define DNS_HELD_QUERY 1     /* leaving the pod: copied, the packet goes on */
#define DNS_HELD_ANSWER 2    /* entering the pod: held, the agent releases it */
struct dns_held {
	__u64 ts_ns;
	__u32 ifindex; /* the pod's host-side veth: where the agent releases an answer */
	__u32 ep_id;
	__u32 len;     /* bytes of data */
	__u8 kind;     /* DNS_HELD_* */
	__u8 pad[3];
	__u8 data[VG_DNS_HELD_MAX];
};

/*
 * vg_est_counters (per-CPU array): the established fast path's counts, a row per endpoint slot,
 * index slot * VG_EST_ROW + kind * 2 + dir, kind 0 ALLOW_CT, 1 ALLOW_REPLY, 2 ALLOW_DEFERRED. An
 * array slot costs an index computation where vg_counters costs a hash lookup; readers add these
 * rows to vg_counters' (ep_id, reason, dir) through vg_endpoints' slot -> ep_id.
 */
#define VG_EST_ROW 6

/* vg_counters (per-CPU hash) */
struct counter_key {
	__u32 ep_id; /* ifindex for DROP_NO_ENDPOINT */
	__u8 reason; /* REASON_* (reasons.h) */
	__u8 dir;
	__u16 pad;
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

/* vg_events (ring buffer): new flows and drops only, rate limited per CPU. */
struct flow_event {
	__u64 ts_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ep_id;
	__u32 peer_identity;
	__u32 peer_cidr_identity;
	__u32 rule_ref; /* the deciding rule: NetworkPolicy or ClusterNetworkPolicy; 0 if none */
	__u8 dir;
	__u8 reason;
	__u8 family;
	__u8 proto;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
};

/*
 * vg_clock (per-CPU array[1]): the tick clock's reading for the current jiffy (lib/clock.h).
 * Internal: what vg_now() returns without a helper call while jiffies have not moved.
 */
struct clock_cache {
	__u64 jiffies; /* bpf_jiffies64() when ns was read; 0: never */
	__u64 ns;      /* bpf_ktime_get_coarse_ns() then */
};

/* vg_evrate (per-CPU array[1]): token bucket that rate-limits vg_events. Internal. */
struct evrate_state {
	__u64 last_ns;
	__u64 tokens;
};

/*
 * vg_evlost (per-CPU array[1]): events the programs did not write, by why: over the rate limit
 * or the ring full. Written only on those paths; the agent reads it (vethguard_flows_lost_total).
 */
struct evlost_state {
	__u64 rate_limited;
	__u64 ring_full;
};

#endif /* VG_STRUCTS_H */
