/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Benchmark only, never loaded by the agent (controller/bench/bpf_parts.py compiles it):
 *   passthrough  returns TC_ACT_OK: the floor every cost is compared with, and the program the
 *                throughput benchmark attaches for its "passthrough" configuration;
 *   part_N       the established-flow path of to_pod (vethguard.c) cut into its steps, to
 *                measure where an established packet's time goes (controller/bench/cost.py).
 *
 * part_N runs the first N steps, in to_pod's order, on the same pinned maps the measured
 * to_pod uses; part_N - part_(N-1) is the cost of step N. The steps of the established fast path
 * (vethguard.c step 0, lib/conntrack.h vg_ct_fast):
 *   1 clock     vg_now() (conntrack expiry needs the time; lib/clock.h)
 *   2 config    vg_config array lookup (policy revision)
 *   3 parse     Ethernet/IP/TCP headers into struct vg_pkt
 *   4 ct        conntrack key (the interface, not the endpoint) and vg_ct LRU hash lookup
 *   5 ct hit    revision/state/slot checks, packet/byte counters (atomic adds), expiry refresh,
 *               and the count in vg_est_counters (an array slot, no hash)
 * What to_pod does besides (mark test, the fast path's eligibility tests, reason to verdict) is
 * the difference between part_5 and to_pod itself.
 *   newpart_N   the same for a new flow: a SYN entering the pod that its NetworkPolicy allows,
 *               one test_run per packet with a new source port each (controller/bench/cost.py):
 *   1 fast path vg_fast's part for a SYN: clock, config, parse, the SYN test (a SYN skips its
 *               conntrack lookups: they would miss)
 *   2 full path vg_handle up to the flow checks: endpoint lookup, the forward conntrack miss
 *               (a SYN skips the reverse lookup: it is never a reply; its second parse, ~10 ns
 *               as in part_3, and config read are left to "rest")
 *   3 peer      the peer's identity: vg_ipcache4 LPM trie lookup
 *   4 policy    the endpoint's NetworkPolicy entries: vg_policy LPM trie lookup (the peer's
 *               identity allows at once here; a peer allowed by a CIDR or ANY entry costs up to
 *               two more)
 *   5 ct create the conntrack entry: LRU hash insert
 *   6 count     vg_counters per-CPU hash
 *   7 event     the event: token bucket, ring buffer record (or the lost-event count)
 * What to_pod does besides (the second parse, ingress origin, Service and fragment tests, the
 * verdict) is the difference between newpart_7 and to_pod.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/clock.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/events.h"

/* `steps` is a constant in every caller, so each part compiles to exactly its steps. */
static __always_inline int vg_part(struct __sk_buff *skb, const int steps)
{
	__u32 ifindex = skb->ifindex, len = skb->len, zero = 0, revision = 0;
	struct ct_value *v = NULL;
	struct ct_key k = {};
	struct vg_pkt p = {};
	struct config *cfg;
	__u64 now = 1;

	if (steps >= 1)
		now = vg_now();
	if (steps >= 2) {
		cfg = vg_config.lookup(&zero);
		if (cfg)
			revision = cfg->revision;
	}
	if (steps >= 3 && vg_parse(skb, &p) != PARSE_OK)
		return TC_ACT_SHOT;
	if (steps >= 4) {
		vg_ct_fill(&k, &p, ifindex, DIR_INGRESS, 0);
		v = vg_ct.lookup(&k);
		if (!v || v->expires_ns <= now)
			return TC_ACT_SHOT;
		if (steps >= 5 && !vg_ct_fast(skb, v, &p, 0, DIR_INGRESS, revision, len, now))
			return TC_ACT_SHOT;
	}
	/* Results are used, so no step can be optimized away. */
	return now && revision != 0xffffffff ? TC_ACT_OK : TC_ACT_SHOT;
}

/* The new-flow steps (newpart_N), in vg_fast's and vg_handle's order. */
static __always_inline int vg_newpart(struct __sk_buff *skb, const int steps)
{
	__u32 ifindex = skb->ifindex, len = skb->len, zero = 0, revision = 0, rule_ref = 0;
	struct ipcache_value peer = {};
	struct endpoint_info *ep;
	struct ct_value *v;
	struct ct_key k = {};
	struct vg_pkt p = {};
	struct config *cfg;
	__u8 reason = ALLOW_POLICY;
	__u64 now = vg_now();

	cfg = vg_config.lookup(&zero);
	if (cfg)
		revision = cfg->revision;
	if (vg_parse(skb, &p) != PARSE_OK)
		return TC_ACT_SHOT;
	if (!vg_tcp_opens(&p))
		return TC_ACT_SHOT; /* the driver sends SYNs */
	if (steps < 2)
		return TC_ACT_OK;
	ep = vg_endpoints.lookup(&ifindex);
	if (!ep)
		return TC_ACT_SHOT;
	/* (a SYN: the forward key only, as vg_handle looks it up) */
	vg_ct_fill(&k, &p, ep->ep_id, DIR_INGRESS, 0);
	v = vg_ct.lookup(&k);
	if (v && v->expires_ns > now)
		return TC_ACT_SHOT; /* not a new flow: the driver sends each tuple once */
	if (steps >= 3)
		vg_peer_lookup(&p, DIR_INGRESS, &peer);
	if (steps >= 4) {
		/* vg_policy_verdict's NetworkPolicy branch, which to_pod takes for this endpoint
		 * (verifier: the whole of it, tiers included, is too much for this test program) */
		struct policy_key pk = {.prefixlen = POLICY_PLEN_FULL, .dir = DIR_INGRESS, .proto = p.proto};

		pk.dport = vg_policy_port(&p);
		reason = vg_np_verdict(ep, DIR_INGRESS, &pk, &peer, &rule_ref);
	}
	if (steps >= 5) {
		vg_ct_fill(&k, &p, ep->ep_id, DIR_INGRESS, 0);
		if (vg_ct_create(&k, &p, revision, rule_ref, len, now, CT_ALLOWED, 0, ep->slot) != 0)
			return TC_ACT_SHOT;
	}
	if (steps >= 6)
		vg_count(ep->ep_id, reason, DIR_INGRESS, len);
	if (steps >= 7)
		vg_emit(&p, ep->ep_id, DIR_INGRESS, reason, &peer, rule_ref);
	/* Results are used, so no step can be optimized away. */
	return REASON_IS_DROP(reason) || peer.identity == 0xffffffff ? TC_ACT_SHOT : TC_ACT_OK;
}

/* part_N: the first N steps, a program of its own (loaded by name from cost.py). */
#define VG_PART(n)                                                                                 \
	int part_##n(struct __sk_buff *skb)                                                        \
	{                                                                                          \
		return vg_part(skb, n);                                                            \
	}

VG_PART(1)
VG_PART(2)
VG_PART(3)
VG_PART(4)
VG_PART(5)

#define VG_NEWPART(n)                                                                              \
	int newpart_##n(struct __sk_buff *skb)                                                     \
	{                                                                                          \
		return vg_newpart(skb, n);                                                         \
	}

VG_NEWPART(1)
VG_NEWPART(2)
VG_NEWPART(3)
VG_NEWPART(4)
VG_NEWPART(5)
VG_NEWPART(6)
VG_NEWPART(7)

int passthrough(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
