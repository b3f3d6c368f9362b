/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The decision on a new flow: a packet that found no conntrack entry, or one that is never
 * tracked (non-echo ICMP). Two places decide one: an endpoint's own hook (from_pod / to_pod,
 * vg_handle) and the judge of a deferred Service packet after DNAT (to_pod of a backend or
 * to_uplink, vg_judge). Both run this one sequence, so a flow through a Service is judged
 * exactly like the same flow sent straight to its backend:
 *
 *   1. the peer's identity (ipcache LPM). Only here: established packets skip the lookup;
 *   2. entering a pod, who really sent it (lib/trust.h): a local pod's address from the wrong
 *      interface is DROP_SPOOFED, a packet the node masqueraded is judged as its real sender;
 *   3. the node itself: ALLOW_HOST, unless (a pod's egress to it) a ClusterNetworkPolicy tier
 *      denies it. Never tracked, so host traffic always comes back here;
 *   4. the endpoint's policy for the direction (lib/policy.h): the tiers where a
 *      ClusterNetworkPolicy selects the pod, else NetworkPolicy;
 *   5. allowed: a conntrack entry, so replies pass an isolated direction and later packets
 *      take the established path. Failing to create one fails closed where isolated.
 */
#ifndef VG_NEWFLOW_H
#define VG_NEWFLOW_H

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"
#include "conntrack.h"
#include "trust.h"
#include "dnslearned.h"

/*
 * Decide a new flow of endpoint `ep` in direction `dir`. Returns the reason:
 *   DROP_SPOOFED, DROP_PENDING, DROP_POLICY, DROP_ADMIN,     drop it
 *   DROP_BASELINE, DROP_CT_FULL
 *   ALLOW_HOST                                               pass it, untracked
 *   ALLOW_POLICY, ALLOW_ADMIN, ALLOW_BASELINE,               a flow allowed by policy
 *   ALLOW_NOT_ISOLATED, ALLOW_AUDIT                          (vg_new_flow_allowed)
 * *peer: the peer as judged, for the event; *rule_ref: the rule that decided (an allowing
 * NetworkPolicy rule, or the ClusterNetworkPolicy rule that accepted or denied), else untouched.
 *
 *   sender  to_pod: the client endpoint of a deferred packet, 0 if none (vg_ingress_origin)
 *   track   0 for packets that are never tracked (vg_icmp_untracked): judged packet by packet
 *   nat     1 for the judge's entry of a deferred flow (post-DNAT tuple, ct_key.nat)
 *   k       scratch; holds the new entry's key afterwards when one was created
 * Callers pass constants for dir, track and nat where they know them, so each inlined copy
 * keeps only its own branches (the judge has no ingress origin check, for instance).
 */
static __always_inline __u8 vg_new_flow(struct __sk_buff *skb, const struct endpoint_info *ep,
					const struct vg_pkt *p, __u8 dir, __u32 sender, int track, __u8 nat,
					__u32 revision, __u32 len, __u64 now, struct ct_key *k,
					struct ipcache_value *peer, __u32 *rule_ref)
{
	__u16 origin = 0;
	__u32 fqdn = 0;
	__u8 reason;

	vg_peer_lookup(p, dir, peer);
	/* (not the judge's: a Service's backends are pods, never addresses learned from DNS) */
	if (dir == DIR_EGRESS && !nat)
		fqdn = vg_dns_identity(ep, p->family, p->daddr, now, 1);
	if (dir == DIR_INGRESS && (reason = vg_ingress_origin(skb, sender, p, peer, &origin)))
		return reason;
	if (peer->identity == ID_HOST) {
		/* The node's traffic to its pods always passes. A pod's own traffic to its node passes
		 * unless a ClusterNetworkPolicy tier denies it (NetworkPolicy never does). Either way
		 * untracked, so every packet is judged again and a policy change applies at once. */
		if (dir == DIR_INGRESS || !(ep->flags & EP_F_EGRESS_TIERED))
			return ALLOW_HOST;
		reason = vg_policy_verdict(ep, dir, p->proto, vg_policy_port(p), peer, 0, 1, rule_ref, p);
		return REASON_IS_DROP(reason) ? reason : ALLOW_HOST;
	}
	reason = vg_policy_verdict(ep, dir, p->proto, vg_policy_port(p), peer, fqdn, 0, rule_ref, p);
	if (REASON_IS_DROP(reason) || !track)
		return reason;
	/* Track every allowed flow, isolated direction or not: its replies may enter an isolated one. */
	vg_ct_fill(k, p, ep->ep_id, dir, 0);
	k->nat = nat;
	/* No entry (an allocation failure: the LRU map evicts rather than fails): fail closed where
	 * the direction is isolated, DROP_CT_FULL (docs/INTERNALS.md, vg_ct). */
	if (vg_ct_create(k, p, revision, *rule_ref, len, now, CT_ALLOWED, origin, ep->slot) != 0 &&
	    vg_dir_isolated(ep, dir))
		return DROP_CT_FULL;
	return reason;
}

/*
 * Did the policy allow the new flow (ALLOW_POLICY, ALLOW_ADMIN, ALLOW_BASELINE,
 * ALLOW_NOT_ISOLATED, ALLOW_AUDIT)? Then it is reported as a new flow, with its rule. A drop or
 * ALLOW_HOST is the packet's whole story: counted, an event for a drop only (with the tier's rule
 * that denied it, if one did), no fragment bookkeeping.
 */
static __always_inline int vg_new_flow_allowed(__u8 reason)
{
	return !REASON_IS_DROP(reason) && reason != ALLOW_HOST;
}

#endif /* VG_NEWFLOW_H */
