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
 *   1 clock     vg_now() (conntrack expiry needs the time)
 *   2 config    vg_config array lookup (policy revision)
 *   3 parse     Ethernet/IP/TCP headers into struct vg_pkt
 *   4 ct        conntrack key (the interface, not the endpoint) and vg_ct LRU hash lookup
 *   5 ct hit    revision/state/slot checks, packet/byte counters (atomic adds), expiry refresh,
 *               and the count in vg_est_counters (an array slot, no hash)
 * What to_pod does besides (mark test, the fast path's eligibility tests, reason to verdict) is
 * the difference between part_5 and to_pod itself.
 */
#include "lib/common.h"
#include "lib/maps.h"
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

int passthrough(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
